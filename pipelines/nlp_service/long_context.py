"""The encoder extended from 512 to 16,384 positions, the way Longformer extended RoBERTa.

:func:`extend` takes a trained :class:`model.DialogueNet` and returns a :class:`LongEncoder`
over the same weights: the 512 learned position embeddings are copied across the new
positions (position ``p`` starts as position ``p mod 512``), and full self-attention is
replaced in every layer by :func:`core.kernels.sliding_window_attention` — each token sees
``window`` tokens on either side (configurable per layer), and *global* tokens see and are seen
by every token: the ``[CLS]`` token and the turn markers (the ``[SEP]`` that closes every
turn), so a fact given at turn 5 reaches the classification token at turn 90 in one hop. On
CPU the chunked O(N·W) PyTorch path runs; on a GPU the Triton kernel.

Shapes: ``ids``/``mask`` ``(B, N)`` int64, N ≤ ``max_positions``; out ``(B, N, 384)``.
``attention="dense"`` runs the same model with dense attention and the same visibility as a
boolean mask (``scaled_dot_product_attention``, O(N²)): the peer of the speed benchmark and
the reference of the tests. With ``window >= N - 1`` both equal the original 512-token
encoder on inputs it can read.

Continued training (:func:`train_long`, through :class:`core.train.Trainer`): a question
head on the ``[CLS]`` output learns "which plan is *it*?" on generated long conversations
(``synth.long_conversation``) where the plan is named once near the start and the last turn
says "cancel it". :func:`evaluate_long` compares, on conversations held apart (another seed,
~16K tokens), the long model against the same encoder truncated to the last 512 tokens and
trained the same way, and measures the intent accuracy the trained encoder keeps on short
messages (``short_drop``).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError
from core.kernels.swa import dense_mask, sliding_window_attention


class LongEncoder(nn.Module):
    """A BERT encoder's layers with sliding-window + global attention and more positions."""

    def __init__(
        self,
        bert: nn.Module,
        max_positions: int = 16384,
        window: int | list[int] = 256,
        attention: str = "swa",
    ) -> None:
        super().__init__()
        cfg = bert.config
        n_layers = cfg.num_hidden_layers
        self.windows = [window] * n_layers if isinstance(window, int) else list(window)
        if len(self.windows) != n_layers or min(self.windows) < 0:
            raise ConfigError(
                f"window must be one value or {n_layers} values >= 0", fix="e.g. window=256"
            )
        if attention not in ("swa", "dense"):
            raise ConfigError("attention must be 'swa' or 'dense'", fix="use 'swa'")
        self.attention = attention
        self.heads = cfg.num_attention_heads
        emb = bert.embeddings
        self.word, self.token_type, self.norm = (
            emb.word_embeddings,
            emb.token_type_embeddings,
            emb.LayerNorm,
        )
        self.dropout = emb.dropout
        old = emb.position_embeddings.weight.detach()
        reps = -(-max_positions // old.shape[0])
        self.position = nn.Embedding(max_positions, old.shape[1])
        with torch.no_grad():
            self.position.weight.copy_(old.repeat(reps, 1)[:max_positions])
        self.layers = bert.encoder.layer
        self.max_positions = max_positions

    def _attend(
        self,
        i: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kpm: torch.Tensor,
        g: torch.Tensor,
    ) -> torch.Tensor:
        w = self.windows[i]
        if self.attention == "swa":
            return sliding_window_attention(q, k, v, w, global_idx=g, key_padding_mask=kpm)
        m = dense_mask(q.shape[2], w, False, g, kpm, device=q.device)  # (B, 1, N, N)
        out = []
        for h in range(0, q.shape[1], 2):  # two heads at a time keep the N x N scores in memory
            out.append(nn.functional.scaled_dot_product_attention(
                q[:, h : h + 2], k[:, h : h + 2], v[:, h : h + 2], attn_mask=m))  # fmt: skip
        return torch.cat(out, 1)

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, global_idx: torch.Tensor
    ) -> torch.Tensor:
        b, n = ids.shape
        if n > self.max_positions:
            raise ConfigError(
                f"{n} tokens exceed the encoder's {self.max_positions} positions",
                fix="keep the last max_positions tokens",
            )
        pos = torch.arange(n, device=ids.device)
        h = self.word(ids) + self.position(pos)[None] + self.token_type(torch.zeros_like(ids))
        h = self.dropout(self.norm(h))
        kpm = mask == 0
        for i, layer in enumerate(self.layers):
            a = layer.attention.self
            shape = (b, n, self.heads, -1)
            q = a.query(h).view(shape).transpose(1, 2)
            k = a.key(h).view(shape).transpose(1, 2)
            v = a.value(h).view(shape).transpose(1, 2)
            o = self._attend(i, q, k, v, kpm, global_idx).transpose(1, 2).reshape(b, n, -1)
            h = layer.attention.output(o, h)
            h = layer.output(layer.intermediate(h), h)
        return h


def global_positions(ids: torch.Tensor, cls_id: int, sep_id: int) -> torch.Tensor:
    """The global tokens of one sequence (1-D ids): ``[CLS]`` and every turn's ``[SEP]``."""
    return torch.nonzero((ids == cls_id) | (ids == sep_id)).flatten()


def extend(
    net: nn.Module,
    max_positions: int = 16384,
    window: int | list[int] = 256,
    attention: str = "swa",
) -> LongEncoder:
    """A :class:`LongEncoder` sharing the weights of ``net.encoder`` (a ``DialogueNet``)."""
    return LongEncoder(net.encoder, max_positions, window, attention)


class LongClassifier(nn.Module):
    """``(B, 2, N)`` ids + mask -> ``(B, C)`` logits from the ``[CLS]`` output; the global
    tokens are every row's ``[CLS]`` and ``[SEP]`` positions."""

    def __init__(self, encoder: LongEncoder, n_classes: int, cls_id: int, sep_id: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.word.embedding_dim, n_classes)
        self.cls_id, self.sep_id = cls_id, sep_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        g = torch.unique(torch.nonzero((ids == self.cls_id) | (ids == self.sep_id))[:, 1])
        return self.head(self.encoder(ids, mask, g)[:, 0])


def encode_conversations(tok: Any, convs: list[Any], max_tokens: int) -> torch.Tensor:
    """``(B, 2, N)``: each conversation's turns joined by ``[SEP]``, its last ``max_tokens``."""
    texts = [" [SEP] ".join(c.turns) for c in convs]
    enc = tok(texts, truncation=True, max_length=max_tokens, padding=True, return_tensors="pt")
    return torch.stack([enc["input_ids"], enc["attention_mask"]], 1)


def _conversations(cfg: Any, n: int, chars: int, seed: int) -> list[Any]:
    from pipelines.nlp_service.config import SynthConfig
    from pipelines.nlp_service.synth import long_conversation

    r = random.Random(seed)
    scfg = SynthConfig(seed=seed)
    return [long_conversation(r, chars, scfg) for _ in range(n)]


def train_long(
    net: nn.Module, tok: Any, cfg: Any, max_positions: int, window: int
) -> LongClassifier:
    """A copy of ``net``'s encoder extended to ``max_positions`` and trained on the question
    (``net`` itself is left as it was)."""
    from torch.utils.data import TensorDataset

    from core.train import Trainer, TrainerConfig, seed_everything
    from pipelines.nlp_service.synth import PLANS

    seed_everything(cfg.seed)
    enc = extend(
        copy.deepcopy(net), max_positions, window if window < max_positions else max_positions
    )
    model = LongClassifier(enc, len(PLANS), tok.cls_token_id, tok.sep_token_id)
    convs = _conversations(cfg, cfg.train_conversations, cfg.train_chars, cfg.seed + 11)
    x = encode_conversations(tok, convs, min(max_positions, 4096))
    y = torch.tensor([c.plan for c in convs])
    tcfg = TrainerConfig(
        max_epochs=cfg.epochs, batch_size=2, eval_every_n_epochs=0, seed=cfg.seed,
        grad_clip_norm=1.0, log_every_n_steps=10,
        optimizer={"name": "adamw", "lr": cfg.lr, "weight_decay": 0.01},
        schedule={"name": "cosine", "warmup_steps": 5},
    )  # fmt: skip
    head = {id(p) for p in model.head.parameters()}

    def factory(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        from core.train import build_optimizer

        return build_optimizer(
            [{"params": [p for p in params if id(p) not in head], "lr_scale": 1.0},
             {"params": [p for p in params if id(p) in head], "lr_scale": 30.0}],
            tcfg.optimizer,
        )  # fmt: skip

    Trainer(model, tcfg, optimizer_factory=factory).fit(TensorDataset(x, y))
    return model.eval()


def _accuracy(an: Any, texts: list[str], labels: list[str]) -> float:
    return float(np.mean([a.intent == g for a, g in zip(an.analyze(texts), labels, strict=True)]))


def evaluate_long(
    net: nn.Module,
    tok: Any,
    cfg: Any,
    short_texts: list[str],
    short_labels: list[str],
    intents: list[str],
) -> dict[str, Any]:
    """The long model against the 512-token truncation, on held-apart ~16K-token
    conversations, and the long encoder's intent accuracy on short messages."""
    from pipelines.nlp_service import model as M

    out: dict[str, Any] = {}
    convs = _conversations(cfg, cfg.eval_conversations, cfg.eval_chars, cfg.seed + 5000)
    y = np.array([c.plan for c in convs])
    for name, positions in (("16k", cfg.max_positions), ("trunc512", 512)):
        model = train_long(net, tok, cfg, positions, cfg.window if positions > 512 else 512)
        pred = []
        with torch.inference_mode():
            for c in convs:
                pred.append(int(model(encode_conversations(tok, [c], positions)).argmax(-1)))
        out[f"accuracy_{name}"] = float((np.array(pred) == y).mean())
        out[f"tokens_{name}"] = int(encode_conversations(tok, convs[:1], positions).shape[-1])
        if name == "16k":
            trained = copy.deepcopy(net)
            trained.encoder.encoder.layer = model.encoder.layers  # the continued-trained layers
            trained.encoder.embeddings.word_embeddings = model.encoder.word
            before = M.Analyzer.from_net(net, tok, {"intents": intents, "max_tokens": 128})
            after = M.Analyzer.from_net(trained, tok, {"intents": intents, "max_tokens": 128})
            out["short_accuracy_before"] = _accuracy(before, short_texts, short_labels)
            out["short_accuracy_after"] = _accuracy(after, short_texts, short_labels)
            out["short_drop"] = out["short_accuracy_before"] - out["short_accuracy_after"]
    out["gain"] = out["accuracy_16k"] - out["accuracy_trunc512"]
    out["eval_conversations"] = len(convs)
    out["fact_within_first"] = "10% of the turns"
    return out
