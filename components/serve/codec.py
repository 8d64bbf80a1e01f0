"""The Open Inference (V2) request and response for distilflow models, as plain JSON dicts.

Request: one BYTES input `text` holding N raw strings (sentences, for a tagger), shape [N].
Response: one output per pyfunc column, N rows each: `label` (str), `score` and `prob_<name>`
(FP64) for a classifier; `entities` (a JSON list of {entity, text, start, end, score} per text,
content type pd_json) and `tags` for a tagger.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

INPUT = "text"  # the one input name components/serve/runtime.py accepts


class V2Error(Exception):
    """A non-2xx answer: its HTTP status and the server's one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


def v2_request(texts: list[str], name: str = INPUT) -> dict:
    return {"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}]}


def decode_response(body: dict) -> list[dict]:
    """A V2 response -> one dict per text, keyed by output name (pd_json outputs parsed)."""
    columns = {}
    for out in body["outputs"]:
        data = out["data"]
        if (out.get("parameters") or {}).get("content_type") == "pd_json":
            data = [json.loads(d) for d in data]
        columns[out["name"]] = data
    rows = len(next(iter(columns.values()))) if columns else 0
    return [{name: values[i] for name, values in columns.items()} for i in range(rows)]


def error_reason(body: bytes) -> str:
    """One line from an error body: MLServer's {"error": ...} or FastAPI's {"detail": [...]}."""
    text = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300] or "(empty body)"
    if isinstance(payload, dict) and payload.get("error"):
        reason = str(payload["error"])
        reason = reason.split(": ", 1)[1] if reason.startswith("mlserver.") and ": " in reason else reason
    elif isinstance(payload, dict) and isinstance(payload.get("detail"), list) and payload["detail"]:
        first = payload["detail"][0]
        where = ".".join(str(x) for x in first.get("loc", []))
        why = (first.get("ctx") or {}).get("error")
        reason = f"{where}: {first.get('msg', '')}" + (f" ({why})" if why else "")
    else:
        reason = text
    return " ".join(reason.split())[:300]


def post(url: str, body: bytes, content_type: str = "application/json", timeout: float = 60.0) -> tuple[int, bytes]:
    """POST body; (status, response body) for any HTTP status (connection errors raise)."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def infer(infer_url: str, texts: list[str], timeout: float = 60.0) -> list[dict]:
    """Send texts to a V2 /infer endpoint; one dict per text, or V2Error."""
    status, body = post(infer_url, json.dumps(v2_request(texts)).encode(), timeout=timeout)
    if status != 200:
        raise V2Error(status, error_reason(body))
    return decode_response(json.loads(body))
