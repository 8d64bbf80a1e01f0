"""Training machinery: teacher fine-tuning (the Hugging Face Trainer) and the student's staged
distillation (plan, epoch loop, early stopping, checkpoints), which both tasks share, and the
classic TF-IDF + logistic regression baseline that evaluate fits for sequence classification
(classic.py).

May import: core, settings, contracts, models, tracking.
"""
