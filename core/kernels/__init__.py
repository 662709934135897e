"""GPU kernels the pipelines need, each beside its PyTorch reference and a dispatcher.

* :mod:`core.kernels.swa` — sliding-window attention with global tokens and key padding
  (Triton forward + backward, FlashAttention-2 style; chunked O(N·W) PyTorch elsewhere).
* :mod:`core.kernels.int8_linear` — weight-only INT8 and W8A8 linear layers (Triton GEMMs
  with fused dequantization; ``Int8Linear`` replaces ``nn.Linear``).
* :mod:`core.kernels.sparsify` — top-k gradient sparsification with error feedback (a CUDA
  C++ kernel built on first use; ``torch.topk`` elsewhere), used by the ``topk`` DDP hook.

``python -m core.kernels.compile_check`` compiles the Triton kernels for sm_80 / sm_90 on
any machine (registers, spills, shared memory).

Dispatch is at run time: kernels for CUDA tensors, references for everything else;
``DV_KERNELS=reference`` forces the references. Importing this package imports neither
Triton nor a CUDA extension, and never initialises CUDA.
"""

from core.kernels.int8_linear import Int8Linear, quantize_linears
from core.kernels.sparsify import sparsify_ef
from core.kernels.swa import sliding_window_attention

__all__ = ["Int8Linear", "quantize_linears", "sliding_window_attention", "sparsify_ef"]
