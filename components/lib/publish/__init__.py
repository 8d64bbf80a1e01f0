"""Publishing a student: ONNX (+ int8) with parity checks, the MLflow pyfunc that serves raw text,
and registration in the model registry behind the quality gate.

May import: core, settings, contracts, models, tracking, evaluation.
"""
