"""Search-space files and the code that turns them into Ray Tune / Optuna spaces."""
