"""Content hashes of data sets, for lineage, caching and the registry.

``hash_arrays`` covers in-memory arrays (name, dtype, shape and bytes); ``hash_files`` covers
files under a directory (relative path and bytes, in sorted order). Either changes whenever
the data changes, and never otherwise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np


def hash_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def hash_files(
    paths: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str] | None = None
) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        rel = p.relative_to(root) if root else p
        h.update(f"{rel}|".encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def hash_directory(root: str | os.PathLike[str]) -> str:
    root = Path(root)
    return hash_files((p for p in root.rglob("*") if p.is_file()), root)
