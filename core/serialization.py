"""Pickle-free serialization of nested training state.

Optimizer, scheduler, scaler, RNG and comm-hook states are trees of dicts, lists, tuples,
scalars, strings, tensors and NumPy arrays. :func:`save_tree` writes the tree's shape to a
JSON file and its tensors to a safetensors file; :func:`load_tree` reads them back. Loading
never unpickles anything, so a checkpoint from an untrusted source cannot run code.

Not a general object serializer: arbitrary classes raise ``TypeError`` on save.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"
_NDARRAY = "__ndarray__"
_TUPLE = "__tuple__"
_DICT = "__dict__"  # dict with non-string keys, stored as [[key, value], ...]


def flatten_tree(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``obj`` into a JSON-able skeleton and a flat ``{key: tensor}`` map."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x.detach().cpu().clone()  # clone: safetensors refuses shared storage
            return {_TENSOR: key}
        if isinstance(x, np.ndarray):
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(x).copy())
            return {_NDARRAY: key, "dtype": str(x.dtype)}
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {k: walk(v) for k, v in x.items()}
            return {_DICT: [[walk(k), walk(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {_TUPLE: [walk(v) for v in x]}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(f"cannot serialize object of type {type(x).__name__} without pickle")

    return walk(obj), tensors


def unflatten_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_tree`."""

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            if _TENSOR in x:
                return tensors[x[_TENSOR]]
            if _NDARRAY in x:
                return tensors[x[_NDARRAY]].numpy().astype(x["dtype"], copy=True)
            if _TUPLE in x:
                return tuple(walk(v) for v in x[_TUPLE])
            if _DICT in x:
                return {_hashable(walk(k)): walk(v) for k, v in x[_DICT]}
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(skeleton)


def _hashable(x: Any) -> Any:
    return tuple(_hashable(v) for v in x) if isinstance(x, list) else x


def save_tree(obj: Any, path: str | os.PathLike[str]) -> list[Path]:
    """Write ``obj`` as ``<path>.json`` + ``<path>.safetensors``; returns the files written."""
    path = Path(path)
    skeleton, tensors = flatten_tree(obj)
    json_path = path.with_suffix(".json")
    st_path = path.with_suffix(".safetensors")
    json_path.write_text(json.dumps(skeleton, allow_nan=True))
    save_file(tensors, str(st_path))
    return [json_path, st_path]


def load_tree(path: str | os.PathLike[str]) -> Any:
    """Read a tree written by :func:`save_tree` (no unpickling)."""
    path = Path(path)
    skeleton = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return unflatten_tree(skeleton, tensors)


def tensors_for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies of a state dict's tensors; tied (shared) tensors are cloned
    so that safetensors accepts them (``load_state_dict`` re-ties them on load)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in state.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (0, id(t))
        t = t.cpu().contiguous()
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add(key)
        out[name] = t
    return out
