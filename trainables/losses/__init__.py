"""losses of celltune.trainables."""
