"""Pure math and decoding: the student network, the losses, word/piece/tag alignment, entity
scores, truncation, the task enum and the user-error types. No file I/O, no MLflow, no kfp.

May import: nothing else in lib.
"""
