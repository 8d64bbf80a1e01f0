"""The multilingual NER benchmark's targets, shared by multilingual_ner.py (which checks them) and
plot_languages.py (which draws them)."""

TEACHER_F1_MIN = 0.60  # a teacher worth distilling: macro entity F1 over the languages
# XtremeDistil's figures: 95% of the teacher's F1, 35x fewer parameters, 51x faster batch inference.
RETENTION_MEAN_MIN, RETENTION_EACH_MIN, COMPRESSION_MIN, SPEEDUP_MIN = 0.95, 0.90, 35.0, 51.0
TEACHER_FAILS_BELOW = 0.5  # a language whose teacher F1 is below this has little to distil
