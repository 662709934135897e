"""core.compress: from a trained model to a small, fast deployment.

``fuse`` (BN folding), ``prune`` (structured channel pruning on a traced dependency graph),
``quantize`` (ONNX Runtime static/dynamic INT8), ``distill`` (knowledge distillation through
``core.train``), ``export`` (ONNX and ``torch.export`` with parity checks) and ``report``
(parameters, size, MACs, latency side by side).
"""
