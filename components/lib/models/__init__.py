"""The teacher and the student as files and functions: load and score a Hugging Face encoder;
save, load and run a student dir.

May import: core, contracts.
"""
