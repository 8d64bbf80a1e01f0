"""One entry of data.languages: a language's labeled sources, its own unlabeled text, augmentation
and (optionally) reader settings of its own; and the strict base every config model shares.
Re-exported by lib/settings/config.py, where the rest of the configuration lives."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=False)


class LanguageSource(Strict):
    """One language of a multilingual token-classification set (data.languages)."""

    lang: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_-]+$", description="language code written to the lang column (da, pt, zh, ...)")
    source: str = Field(..., description="this language's labeled train source: CoNLL/IOB file, datasets name or dir, JSONL/Parquet (a path or an s3:// gs:// hf:// http(s):// URI)")
    test_source: str | None = Field(None, description="this language's official test file, path or URI (else the source's test split)")
    dataset_config: str | None = Field(None, description="Hugging Face configuration of this language (e.g. wikiann: de)")
    unlabeled: list[str] | None = Field(None, description="this language's unlabeled text for the transfer set: files, globs or folders (path or URI); .txt = one sentence a line, .jsonl/.parquet/.csv = data.unlabeled_text_column (or data.tokens_column), CoNLL suffixes = its words; split into words by data.pretokenizer and data.segmenter")
    unlabeled_fraction: float = Field(1.0, gt=0, le=1, description="seeded share of this language's unlabeled sentences kept (after de-duplication and the test-overlap check)")
    max_unlabeled_rows: int | None = Field(None, ge=1, description="cap on this language's unlabeled sentences (a seeded sample); None keeps all")
    augment_copies: int = Field(0, ge=0, le=100, description="mention-replacement copies made of each train sentence with an entity (the train split only; the teacher labels them in the transfer set); 0: none")
    # reader settings of this language's CoNLL files (lib/sources/token_ingest.py READER_KEYS); None = the data.* value
    format: Literal["auto", "csv", "jsonl", "parquet", "hf", "conll"] | None = Field(None, description="this language's data.format (None: the global value)")
    conll_layout: Literal["fields", "auto"] | None = Field(None, description="this language's data.conll_layout (None: the global value)")
    conll_token_field: int | None = Field(None, description="this language's data.conll_token_field (None: the global value)")
    conll_tag_field: int | None = Field(None, description="this language's data.conll_tag_field (None: the global value)")
    conll_comments: bool | None = Field(None, description="this language's data.conll_comments (None: the global value)")
    conll_delimiter: Literal["whitespace", "tab"] | None = Field(None, description="this language's data.conll_delimiter (None: the global value)")
    conll_empty_words: Literal["fail", "drop"] | None = Field(None, description="this language's data.conll_empty_words (None: the global value)")

    @field_validator("unlabeled", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v
