"""Ingestion: raw sources (packaged demos, Hugging Face datasets, CSV/JSONL/Parquet, CoNLL/IOB,
remote URIs) into plain frames and sentences, the low-resource split's shared machinery, and the
packaged teachers that are made on first use
(multilingual-e5-small converted from 4 bits, all-mpnet-base-v2 assembled from a split zip).

May import: core, settings, contracts.
"""
