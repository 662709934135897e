"""What the server serves: a small predictor protocol and a predictor for model directories.

A predictor turns one request body into batchable *items*, runs a batched forward over items
from many requests, and turns each item's output back into JSON::

    decode(body) -> list[item]            # JSON value or MultipartBody; RequestError -> HTTP 422
    predict_batch(list[item]) -> list[out] # one forward for the whole dynamic batch
    encode(list[out]) -> dict              # the response body for one request

``load()`` and ``warmup()`` run once before the server reports ready. Domain pipelines write
their own predictors (images, DICOM, dialogue); :class:`ModelDirPredictor` serves any model
directory whose input is one float tensor (``config.json``'s ``input_shape``), from
``model.onnx`` through ONNX Runtime when present, else the PyTorch weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.errors import DVError


@dataclass
class Upload:
    """One file of a ``multipart/form-data`` request."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class MultipartBody:
    """What a predictor's ``decode`` receives for a multipart request (JSON bodies arrive
    parsed, as dicts and lists)."""

    files: list[Upload] = dc_field(default_factory=list)
    fields: dict[str, str] = dc_field(default_factory=dict)


class RequestError(DVError):
    """A request body is invalid; ``errors`` are field-level ``{"loc": [...], "msg": ...}``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


class NotFound(RequestError):
    """The request names something that does not exist (a conversation id): HTTP 404."""


class Conflict(RequestError):
    """The request contradicts what is already recorded (a decision made before): HTTP 409."""


@dataclass(frozen=True)
class Route:
    """An endpoint of a domain's own beside ``/v1/models/{name}/predict``: requests to
    ``path`` (``{param}`` placeholders allowed) reach the predictor's ``decode`` as
    ``RouteCall(route.name, path_params, body, query)`` and take the same admission,
    batching, limits and metrics as predictions."""

    method: str  # "GET" or "POST"
    path: str  # e.g. "/v1/conversations/{conversation_id}/messages"
    name: str  # what decode sees in RouteCall.route


@dataclass(frozen=True)
class Ready:
    """What ``decode`` returns (alone) for a request it has answered itself, such as a read
    of stored results: it skips the batch queue, so reads never wait behind the model."""

    value: Any


class Reply(dict):
    """A route's answer that a predictor's ``encode`` sends as it is, beside the model name and
    version (what tells it apart from a prediction, which ``encode`` formats)."""


@dataclass(frozen=True)
class Binary:
    """A route's answer that is not JSON (an image, a ZIP), sent as it is."""

    data: bytes
    media_type: str
    filename: str | None = None  # set: sent as a download (Content-Disposition: attachment)


@dataclass
class RouteCall:
    route: str
    params: dict[str, str]
    body: Any  # the parsed JSON body (None for GET or an empty body)
    query: dict[str, str] = dc_field(default_factory=dict)  # the URL's query parameters


def query_int(query: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """A whole-number query parameter in ``lo..hi`` (``default`` when absent), else a 422
    naming it."""
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise RequestError(
            [{"loc": ["query", name], "msg": f"must be a whole number from {lo} to {hi}"}]
        )
    return int(raw)


def query_choice(query: dict[str, str], name: str, choices: tuple[str, ...]) -> str:
    """A query parameter that must be one of ``choices`` (the first when absent)."""
    raw = query.get(name, choices[0])
    if raw not in choices:
        raise RequestError(
            [{"loc": ["query", name], "msg": f"must be one of {', '.join(choices)}"}]
        )
    return raw


def review_body(
    body: Any, field: str, choices: tuple[Any, ...], hint: str
) -> tuple[Any, str | None, str | None]:
    """A reviewer's decision ``{field: one of choices, "note"?: text, "reviewer"?: text}`` as
    ``(value, note, reviewer)``; a 422 naming the field otherwise (``True`` is not ``1``)."""
    value = body.get(field) if isinstance(body, dict) else None
    if not any(type(value) is type(c) and value == c for c in choices):
        raise RequestError([{"loc": ["body", field], "msg": hint}])
    texts = []
    for name, most in (("note", 2000), ("reviewer", 200)):
        v = body.get(name)
        if v is not None and (not isinstance(v, str) or len(v) > most):
            raise RequestError([{"loc": ["body", name], "msg": f"{name} must be text of at most {most} characters"}])  # fmt: skip
        texts.append(v)
    return value, texts[0], texts[1]


class Predictor(Protocol):
    name: str
    version: str

    def load(self) -> None: ...
    def warmup(self) -> None: ...
    def decode(self, body: Any) -> list[Any]: ...
    def predict_batch(self, items: list[Any]) -> list[Any]: ...
    def encode(self, outputs: list[Any]) -> dict[str, Any]: ...


_F32_MAX = float(np.finfo(np.float32).max)
_KINDS = {type(None): "null", bool: "true/false", str: "a string", dict: "an object"}


def numeric_array(sample: Any) -> np.ndarray:
    """A JSON value that must be a number or nested lists of numbers, as float32.

    Strict where NumPy is lenient: strings (``"1"``), booleans and null are refused, not
    converted, and a value beyond float32's range is refused instead of becoming infinity.
    Raises RequestError with the position (``loc`` inside the sample) of the first bad value."""
    stack: list[tuple[Any, tuple[int, ...]]] = [(sample, ())]
    while stack:
        value, at = stack.pop()
        kind = type(value)
        if kind is list:
            stack.extend((v, (*at, j)) for j, v in enumerate(value))
        elif kind is not float and kind is not int:
            what = _KINDS.get(kind, kind.__name__)
            shown = f" {value!r}" if kind is str else ""
            raise RequestError([{"loc": list(at), "msg": f"{what}{shown} where a number belongs"}])
    try:
        arr = np.asarray(sample, dtype=np.float64)
    except (ValueError, OverflowError) as exc:  # ragged lists, integers beyond float64
        msg = "numbers out of range" if isinstance(exc, OverflowError) else "ragged nested lists"
        raise RequestError([{"loc": [], "msg": msg}]) from None
    out_of_range = np.isfinite(arr) & (np.abs(arr) > _F32_MAX)
    if out_of_range.any():
        where = [int(v) for v in np.argwhere(out_of_range)[0]]
        raise RequestError(
            [{"loc": where, "msg": f"a number beyond float32's range (±{_F32_MAX:.3g})"}]
        )
    return arr.astype(np.float32)


class ModelDirPredictor:
    """Classifier over one float tensor input: ``{"inputs": [sample, ...]}`` -> labels and scores."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        name: str | None = None,
        version: str = "1",
        threads: int | None = None,
        max_items: int = 64,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.version = str(version)
        self.threads = threads
        self.max_items = max_items
        self.input_shape: tuple[int, ...] = ()
        self.labels: list[str] | None = None
        self._run: Any = None

    def load(self) -> None:
        from core.artifacts import read_config

        cfg = read_config(self.model_dir)
        self.input_shape = tuple(cfg.get("input_shape") or ())
        self.labels = cfg.get("labels")
        onnx_path = self.model_dir / "model.onnx"
        if onnx_path.is_file():
            from core.compress.report import load_ort_session

            sess = load_ort_session(onnx_path, self.threads)
            name = sess.get_inputs()[0].name
            self._run = lambda x: sess.run(None, {name: x})[0]
        else:
            import torch

            from core.models import load_model_dir

            model, _ = load_model_dir(self.model_dir)

            def run(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return model(torch.from_numpy(x)).float().numpy()

            self._run = run

    def warmup(self) -> None:
        self._run(np.zeros((1, *self.input_shape), dtype=np.float32))

    def decode(self, body: Any) -> list[np.ndarray]:
        if isinstance(body, MultipartBody):
            raise RequestError([{"loc": ["body"], "msg": "this model takes a JSON body"}])
        if not isinstance(body, dict) or "inputs" not in body:
            raise RequestError([{"loc": ["body", "inputs"], "msg": "field required"}])
        inputs = body["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise RequestError(
                [{"loc": ["body", "inputs"], "msg": "must be a non-empty list of samples"}]
            )
        if len(inputs) > self.max_items:
            raise RequestError(
                [
                    {
                        "loc": ["body", "inputs"],
                        "msg": f"at most {self.max_items} samples per request",
                    }
                ]
            )
        items, errors = [], []
        for i, sample in enumerate(inputs):
            try:
                arr = numeric_array(sample)
            except RequestError as exc:
                errors.extend({**e, "loc": ["body", "inputs", i, *e["loc"]]} for e in exc.errors)
                continue
            if arr.shape != self.input_shape:
                errors.append(
                    {
                        "loc": ["body", "inputs", i],
                        "msg": f"shape {list(arr.shape)} does not match the model's {list(self.input_shape)}",
                    }
                )
            elif not np.isfinite(arr).all():
                errors.append({"loc": ["body", "inputs", i], "msg": "contains NaN or infinity"})
            else:
                items.append(arr)
        if errors:
            raise RequestError(errors)
        return items

    def predict_batch(self, items: list[np.ndarray]) -> list[np.ndarray]:
        logits = self._run(np.stack(items))
        return list(logits)

    def encode(self, outputs: list[np.ndarray]) -> dict[str, Any]:
        preds = []
        for logits in outputs:
            z = logits - logits.max()
            p = np.exp(z) / np.exp(z).sum()
            k = int(p.argmax())
            preds.append(
                {
                    "label": self.labels[k] if self.labels else k,
                    "score": float(p[k]),
                    "scores": [round(float(v), 6) for v in p],
                }
            )
        return {"model": self.name, "version": self.version, "predictions": preds}
