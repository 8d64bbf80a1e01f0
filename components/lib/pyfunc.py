"""The MLflow pyfunc face of a student: raw text in, label names and probabilities out.

Self-contained on purpose (numpy, pandas, onnxruntime, transformers; no torch, no other
distilflow module): the export step ships this file with the model through `code_paths`, so
`mlflow.pyfunc.load_model("models:/NAME@champion")` works in any process that has those
packages. The bundle (one artifact folder, "student") holds the ONNX graph, the student's
config.json and vocab.json, the teacher's tokenizer files and pyfunc.json (which ONNX file,
label names, max_length).

Tokenisation mirrors components/lib/student_io.py exactly: teacher word pieces with [CLS]/[SEP],
truncated to max_length, mapped through the trimmed vocabulary (unknown -> 1, pad -> 0), pads at
the end; the test suite checks the two agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

BUNDLE = "student"
PYFUNC_CONFIG = "pyfunc.json"
PAD, UNK = 0, 1


def vocab_table(vocab: dict) -> np.ndarray:
    """vocab.json -> (V_teacher,) int64 lookup: teacher piece id -> student id."""
    table = np.full(int(vocab["teacher_vocab_size"]), UNK, dtype=np.int64)
    kept = np.asarray(vocab["teacher_ids"], dtype=np.int64)
    table[kept] = np.arange(2, 2 + len(kept), dtype=np.int64)
    table[int(vocab["teacher_pad_id"])] = PAD
    return table


def as_texts(model_input) -> list[str]:
    """A DataFrame with a `text` column (or a single column), a Series, a list or one string."""
    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            col = model_input["text"]
        elif len(model_input.columns) == 1:
            col = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a 'text' column, got columns {list(model_input.columns)}")
        values = col.tolist()
        if len(values) == 1 and isinstance(values[0], list | tuple | np.ndarray):
            values = list(values[0])  # {"text": [...]} arrives from MLflow as one row holding the list
        return [str(t) for t in values]
    if isinstance(model_input, pd.Series):
        return [str(t) for t in model_input.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict) and "text" in model_input:
        value = model_input["text"]
        return [value] if isinstance(value, str) else [str(t) for t in value]
    if isinstance(model_input, list | tuple | np.ndarray):
        return [str(t) for t in model_input]
    raise ValueError(f"unsupported input type {type(model_input).__name__}: pass texts or a DataFrame with 'text'")


class StudentTextClassifier(mlflow.pyfunc.PythonModel):
    """ONNX Runtime inference of a distilled BiLSTM student over raw strings."""

    def load_context(self, context) -> None:
        self._load(Path(context.artifacts[BUNDLE]))

    def _load(self, bundle: Path) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        conf = json.loads((bundle / PYFUNC_CONFIG).read_text())
        self.label_names: list[str] = list(conf["label_names"])
        self.max_length = int(conf["max_length"])
        self.batch_size = int(conf.get("batch_size", 64))
        self.table = vocab_table(json.loads((bundle / "vocab.json").read_text()))
        self.tokenizer = AutoTokenizer.from_pretrained(str(bundle))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(conf.get("threads", 0))  # 0 = onnxruntime's default
        self.session = ort.InferenceSession(str(bundle / conf["onnx"]), opts, providers=["CPUExecutionProvider"])

    def logits(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, C) float32 logits; batches of similar length, returned in input order."""
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True,
                             return_attention_mask=False, return_token_type_ids=False)
        seqs = [self.table[np.asarray(ids, dtype=np.int64)] for ids in enc["input_ids"]]
        out = np.zeros((len(seqs), len(self.label_names)), dtype=np.float32)
        order = np.argsort([len(s) for s in seqs], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            t = max(1, max(len(seqs[i]) for i in idx))
            ids = np.zeros((len(idx), t), dtype=np.int64)  # (B, T), pads at the end
            mask = np.zeros((len(idx), t), dtype=np.int64)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i])] = seqs[i]
                mask[row, : len(seqs[i])] = 1
            out[idx] = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        return out

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        texts = as_texts(model_input)
        logits = self.logits(texts).astype(np.float64)  # (N, C)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        frame = {"label": [self.label_names[i] for i in best], "score": probs[np.arange(len(best)), best]}
        for c, name in enumerate(self.label_names):
            frame[f"prob_{name}"] = probs[:, c]
        return pd.DataFrame(frame)
