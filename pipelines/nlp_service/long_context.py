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

Not here (not built yet): continued training on long conversations and the long-context
accuracy figures of the benchmark.
"""

from __future__ import annotations

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
