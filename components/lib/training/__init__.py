"""Training machinery both tasks share: teacher fine-tuning (the Hugging Face Trainer) and the
student's staged distillation (plan, epoch loop, early stopping, checkpoints).

May import: core, settings, contracts, models, tracking.
"""
