"""Ingestion: raw sources (packaged demos, Hugging Face datasets, CSV/JSONL/Parquet, CoNLL/IOB,
remote URIs) into plain frames and sentences, the low-resource split's shared machinery, and the
packaged multilingual teacher's conversion.

May import: core, settings, contracts.
"""
