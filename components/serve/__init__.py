"""Serving: the champion (or any MLflow model) behind MLServer's MLflow runtime, the runtime KServe
uses for `modelFormat: mlflow` (Open Inference / V2 protocol); the V2 codec; the InferenceService."""
