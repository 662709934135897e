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


# ---------------------------------------------------------------- references
def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, K)`` float weights -> int8 ``(N, K)`` and fp32 scales ``(N,)`` (symmetric)."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, K)`` activations -> int8 ``(M, K)`` and fp32 per-row scales ``(M,)``."""
    x = x.float()
    scale = x.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    return torch.round(x / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def weight_only_matmul_reference(
    x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x (M, K) @ dequant(wq) (N, K)^T (+ bias)``, accumulated in fp32, returned in x's dtype."""
    y = (x.float() @ wq.float().t()) * scale
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def w8a8_matmul_reference(
    x: torch.Tensor, wq: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Per-token INT8 activations times INT8 weights, int32-exact accumulation."""
    xq, xs = quantize_per_token(x)
    # int8 products summed in float64 are exact for K < 2**37 / 127**2, like int32 accumulation
    acc = xq.double() @ wq.double().t()
    y = acc.float() * xs[:, None] * scale[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


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
