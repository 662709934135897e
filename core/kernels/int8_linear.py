"""INT8 linear layers for quantized deployment on GPU: weight-only INT8 and W8A8.

* **Weight-only** (decode and serving shapes, M = 1..64): weights stored as int8 with one
  fp32 scale per output channel (symmetric, ``scale = max|w| / 127``); the Triton GEMM loads
  int8 tiles, converts them in registers and multiplies with fp16 / bf16 activations,
  applying the scale (and bias) to the fp32 accumulator — dequantization fused, so only half
  the bytes of a bf16 weight cross memory, which is what bounds small-M GEMMs.
* **W8A8** (large M, prefill / batch scoring): activations quantized per token at run time
  (``scale = max|x_row| / 127``), an int8 x int8 -> int32 GEMM, then both scales applied.

``Int8Linear.from_float(linear)`` replaces an ``nn.Linear``; ``quantize_linears(model)``
swaps every ``nn.Linear`` in a model. Dispatch: the Triton kernels on CUDA, the PyTorch
references (same arithmetic) elsewhere; ``mode="auto"`` takes W8A8 from ``w8a8_min_tokens``
rows on. Error bound (tests): per output, |y - y_float| <= sum_k |x_k| * scale / 2 for
weight-only (round-to-nearest), plus the activation rounding term for W8A8.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import ConfigError
from core.kernels._triton import wants_triton
from core.kernels.int8_ref import (  # the references, re-exported: the public API keeps them
    quantize_per_channel,
    quantize_per_token,
    w8a8_matmul_reference,
    weight_only_matmul_reference,
)

__all__ = [
    "Int8Linear",
    "quantize_linears",
    "quantize_per_channel",
    "quantize_per_token",
    "w8a8_matmul",
    "w8a8_matmul_reference",
    "weight_only_matmul",
    "weight_only_matmul_reference",
]


# ---------------------------------------------------------------- dispatch
def weight_only_matmul(
    x: torch.Tensor,
    wq: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    if wants_triton(x, backend):
        from core.kernels.int8_triton import weight_only_gemm

        return weight_only_gemm(x, wq, scale, bias)
    return weight_only_matmul_reference(x, wq, scale, bias)


def w8a8_matmul(
    x: torch.Tensor,
    wq: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    if wants_triton(x, backend):
        from core.kernels.int8_triton import w8a8_gemm

        return w8a8_gemm(x, wq, scale, bias)
    return w8a8_matmul_reference(x, wq, scale, bias)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per-output-channel scales); see the module docstring."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        mode: str = "auto",
        w8a8_min_tokens: int = 256,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if mode not in ("auto", "weight_only", "w8a8"):
            raise ConfigError(f"unknown mode {mode!r}", fix="use auto, weight_only or w8a8")
        self.in_features, self.out_features = in_features, out_features
        self.mode, self.w8a8_min_tokens, self.backend = mode, w8a8_min_tokens, backend
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, **kw: object) -> Int8Linear:
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, **kw)  # type: ignore[arg-type]
        q, s = quantize_per_channel(linear.weight)
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(s)
        if linear.bias is not None:
            m.bias = linear.bias.detach().clone()
        return m.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        w8a8 = self.mode == "w8a8" or (self.mode == "auto" and x2.shape[0] >= self.w8a8_min_tokens)
        fn = w8a8_matmul if w8a8 else weight_only_matmul
        y = fn(x2, self.weight_int8, self.weight_scale, self.bias, self.backend)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, mode={self.mode}"


def quantize_linears(model: nn.Module, skip: tuple[str, ...] = (), **kw: object) -> list[str]:
    """Replace every ``nn.Linear`` (names in ``skip`` excepted) by :class:`Int8Linear`;
    returns the replaced module names."""
    done = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear) and name not in skip:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, Int8Linear.from_float(mod, **kw))
            done.append(name)
    return done
