"""Reference tasks on real, shipped data, used by the demo, tests and benchmarks.

``digits``: scikit-learn's 8×8 handwritten digits (1,797 real scans) with a small CNN. It is
domain-free, so it lives in ``core``; the four domain pipelines live in ``pipelines/``.
"""
