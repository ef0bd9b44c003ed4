"""The MLflow pyfunc face of a registered celltune model ("models from code": nothing is pickled).

MLflow copies this file into the logged model and runs it on ``mlflow.pyfunc.load_model``; it only imports
celltune and reads the safetensors weights and ``celltune_model.json`` shipped as artifacts. ``predict`` takes
a batch of raw 2D frames ``(N, H, W)`` (consecutive frames of one sequence for time-window models),
normalizes them with the batch's own statistics as the model's contract says, and returns instance label
images of the same shape.
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class CelltunePyfunc(PythonModel):
    def load_context(self, context) -> None:
        from celltune.platform.model_registry import load_model

        self.loaded = load_model(context.artifacts["celltune"])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow reads them as a schema
        from celltune.data_prep.stats import IntensityStats
        from celltune.trainables.data import normalize
        from celltune.trainables.inference import activation_for, predict_probabilities
        from celltune.trainables.postprocess import postprocess
        from celltune.trainables.temporal_inference import predict_sequence_probabilities

        frames = np.asarray(model_input, dtype=np.float32)
        accumulator = IntensityStats(frames.dtype)
        for frame in frames:
            accumulator.add(frame)
        stats = accumulator.result()
        loaded = self.loaded
        thresholds = loaded.postprocess_params((params or {}).get("dataset") or None)
        images = np.stack([normalize(frame, stats, loaded.normalization) for frame in frames])
        time_window = int(getattr(loaded.model.spec, "time_window", 1) or 1)
        common = {"size_multiple": loaded.size_multiple, "activation": activation_for(loaded.target_kind),
                  "device": "cpu"}
        if time_window > 1:  # the batch is a sequence: every frame is predicted from its sliding window
            probabilities = predict_sequence_probabilities(loaded.model, images, time_window=time_window, **common)
        else:
            probabilities = predict_probabilities(loaded.model, images, **common)
        labels = [postprocess(loaded.target_kind, probs, **thresholds).astype(np.int32) for probs in probabilities]
        return np.stack(labels)


mlflow.models.set_model(CelltunePyfunc())
