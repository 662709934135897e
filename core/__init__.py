"""DeepVerticals core: the domain-free building blocks every pipeline stands on.

Sub-packages: ``core.train`` (training engine), ``core.compress`` (pruning, quantization,
distillation, export), ``core.kernels`` (Triton/CUDA kernels beside PyTorch references),
``core.serve`` (HTTP model server). ``core`` never imports a pipeline or a flow, and
importing it never initialises CUDA: heavy and optional packages are imported where used.
"""

__version__ = "0.1.0"
