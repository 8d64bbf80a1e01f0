"""The MLflow pyfunc faces of a student: raw text in; label names and probabilities out
(StudentTextClassifier), or entity spans with character offsets (StudentTokenTagger).

Self-contained on purpose (numpy, pandas, onnxruntime, transformers; no torch; the classifier
uses only lib/core/truncation.py, the tagger only lib/core/tokens.py, decode.py, segment.py and
errors.py, shipped beside it): the export step ships these files with the model through `code_paths`, so
`mlflow.pyfunc.load_model("models:/NAME@champion")` works in any process that has those
packages. The bundle (one artifact folder, "student") holds the ONNX graph, the student's
config.json and vocab.json, the teacher's tokenizer files and pyfunc.json (which ONNX file,
label names, max_length; for the tagger also the pre-tokeniser and the decoding evaluate used).

Tokenisation mirrors components/lib/models/student_io.py exactly: teacher word pieces with [CLS]/[SEP],
truncated to max_length (truncation.tokenize_truncated), mapped through the trimmed vocabulary
(unknown -> 1, pad -> 0), pads at the end; the test suite checks the two agree. The tagger splits raw text into words with
tokens.pretokenize (the mode and the Han segmenter stored in pyfunc.json), aligns words to pieces with
tokens.encode_words (a word's output lives on its first piece; words past max_length are O),
decodes tags with core/decode.py under pyfunc.json's `decoding` (a bundle without one was
exported when argmax was the only decoding) and reads entity spans with tokens.spans, exactly as
the evaluate step scores the student.
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


def padded_batches(seqs: list[np.ndarray], batch_size: int):
    """Yield (indices, ids (B, T) int64, mask (B, T) int64) over batches of similar length; pads at the end."""
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        t = max(1, max(len(seqs[i]) for i in idx))
        ids = np.zeros((len(idx), t), dtype=np.int64)
        mask = np.zeros((len(idx), t), dtype=np.int64)
        for row, i in enumerate(idx):
            ids[row, : len(seqs[i])] = seqs[i]
            mask[row, : len(seqs[i])] = 1
        yield idx, ids, mask


def _softmax(logits: np.ndarray) -> np.ndarray:
    """(..., C) -> (..., C) probabilities in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


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
        from components.lib.core.truncation import tokenize_truncated

        enc = tokenize_truncated(self.tokenizer, texts, self.max_length, add_special_tokens=True,
                                 return_attention_mask=False, return_token_type_ids=False)
        seqs = [self.table[np.asarray(ids, dtype=np.int64)] for ids in enc["input_ids"]]
        out = np.zeros((len(seqs), len(self.label_names)), dtype=np.float32)
        for idx, ids, mask in padded_batches(seqs, self.batch_size):
            out[idx] = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
        return out

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        texts = as_texts(model_input)
        probs = _softmax(self.logits(texts))  # (N, C)
        best = probs.argmax(axis=1)
        frame = {"label": [self.label_names[i] for i in best], "score": probs[np.arange(len(best)), best]}
        for c, name in enumerate(self.label_names):
            frame[f"prob_{name}"] = probs[:, c]
        return pd.DataFrame(frame)


class StudentTokenTagger(StudentTextClassifier):
    """ONNX Runtime NER with a distilled BiLSTM tagger: raw sentences in, one row per sentence out:
    `entities` (a list of {entity, text, start, end, score}: the span's type, its surface string
    text[start:end], character offsets, and the mean softmax probability of its words' decoded
    tags) and `tags` (one tag per pre-tokenised word)."""

    def _load(self, bundle: Path) -> None:
        from components.lib.core.decode import decoder

        super()._load(bundle)
        conf = json.loads((bundle / PYFUNC_CONFIG).read_text())
        self.pretokenizer = str(conf.get("pretokenizer", "words"))
        from components.lib.core.segment import segmenter

        self.segment = segmenter(conf.get("segmenter", "none"))  # Han runs -> words, as prepare-data split them
        self.decoding = str(conf.get("decoding", "argmax"))
        self.decode = decoder(self.label_names, self.decoding)

    def word_logits(self, sentences: list[list[str]]) -> list[np.ndarray]:
        """Pre-split sentences -> per sentence (n_covered, C) float32 logits at each word's first piece."""
        from functools import partial

        from components.lib.core.tokens import encode_words, graph_word_logits, word_outputs

        enc = encode_words(self.tokenizer, sentences, self.max_length)
        seqs = [self.table[ids] for ids in enc.input_ids]
        firsts = [enc.first_piece[i][: enc.covered(i)] for i in range(len(seqs))]
        return word_outputs(padded_batches(seqs, self.batch_size), firsts, len(self.label_names),
                            partial(graph_word_logits, self.session))

    def tag(self, texts: list[str]) -> tuple[list[list[dict]], list[list[str]]]:
        """Texts -> (entities per text, tag per word per text)."""
        from components.lib.core.tokens import pretokenize, spans

        words = [pretokenize(t, self.pretokenizer, self.segment) for t in texts]  # [(word, start, end)] per text
        logits = self.word_logits([[w for w, _, _ in ws] for ws in words])
        all_entities, all_tags = [], []
        for text, ws, lg in zip(texts, words, logits, strict=True):
            probs = _softmax(lg)  # (n_covered, C)
            best = self.decode(lg, len(ws))  # (n_words,)
            conf = probs[np.arange(len(probs)), best[: len(probs)]]  # (n_covered,) the chosen tag's probability
            tags = [self.label_names[t] for t in best]
            entities = []
            for typ, first, end in spans(tags):  # cut-off words are O, so every span word has a score
                start, stop = ws[first][1], ws[end - 1][2]
                entities.append({"entity": typ, "text": text[start:stop], "start": int(start), "end": int(stop),
                                 "score": float(conf[first:end].mean())})
            all_entities.append(entities)
            all_tags.append(tags)
        return all_entities, all_tags

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        entities, tags = self.tag(as_texts(model_input))
        return pd.DataFrame({"entities": entities, "tags": tags})
