"""Training checkpoints: atomic, complete, verified, pickle-free.

A checkpoint is a directory ``step-<8 digits>`` holding

* ``model.safetensors`` — the model's state dict (full, unsharded);
* ``ema.safetensors`` — the EMA weights, when EMA is on;
* ``state.json`` + ``state.safetensors`` — optimizer, scheduler, loss scaler, per-rank RNG
  (python/numpy/torch/cuda), per-rank comm-hook state and, mid-accumulation, the gradients;
* ``meta.json`` — format version, epoch, global step, batch position inside the epoch,
  accumulation micro-step, world size, metrics, and the SHA-256 of every other file.

It is written into a temporary directory, fsync'ed and renamed (:mod:`core.atomic`), so a
crash never leaves a partial ``step-*``. On resume the checksums are verified; ``resume="auto"``
walks from the newest checkpoint to older ones and skips, with a warning, any that is
incomplete or corrupt. Loading goes through safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.atomic import TMP_PREFIX, atomic_dir, sha256_file
from core.errors import CheckpointError
from core.serialization import load_tree, save_tree, tensors_for_safetensors

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    meta: dict[str, Any]
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically and return its path."""
    target = Path(root) / checkpoint_name(step)
    with atomic_dir(target) as tmp:
        save_file(tensors_for_safetensors(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(tensors_for_safetensors(ema_state), str(tmp / "ema.safetensors"))
        save_tree(state, tmp / "state")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        full_meta = {"format": FORMAT_VERSION, "step": step, **meta, "files": files}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1, allow_nan=True))
    return target


def list_checkpoints(root: Path) -> list[Path]:
    """``step-*`` directories under ``root``, oldest first (temporary ones excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def read_meta(path: Path) -> dict[str, Any]:
    """Parse ``meta.json`` or raise CheckpointError saying what is wrong."""
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(
            "checkpoint has no meta.json (incomplete write)",
            where=str(path),
            fix="delete it; resume from an older checkpoint",
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"meta.json is not valid JSON ({exc})",
            where=str(meta_path),
            fix="delete the checkpoint; resume from an older one",
        ) from exc
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format {meta.get('format')!r}",
            where=str(path),
            fix=f"this version reads format {FORMAT_VERSION}",
        )
    return meta


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check that every file listed in ``meta.json`` exists with its recorded SHA-256."""
    meta = read_meta(path)
    for name, digest in meta.get("files", {}).items():
        f = Path(path) / name
        if not f.is_file():
            raise CheckpointError(
                f"checkpoint file {name} is missing",
                where=str(path),
                fix="delete the checkpoint; resume from an older one",
            )
        if sha256_file(f) != digest:
            raise CheckpointError(
                f"checkpoint file {name} is corrupt (checksum mismatch)",
                where=str(f),
                fix="delete the checkpoint; resume from an older one",
            )
    return meta


def load_checkpoint(path: Path, verify: bool = True) -> Checkpoint:
    """Load a checkpoint (verifying checksums first unless ``verify=False``)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            "checkpoint directory does not exist",
            where=str(path),
            fix="pass an existing step-* directory or resume='auto'",
        )
    meta = verify_checkpoint(path) if verify else read_meta(path)
    try:
        model = load_file(str(path / "model.safetensors"))
        ema = (
            load_file(str(path / "ema.safetensors"))
            if (path / "ema.safetensors").exists()
            else None
        )
        state = load_tree(path / "state")
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint cannot be read ({exc})",
            where=str(path),
            fix="delete it; resume from an older checkpoint",
        ) from exc
    return Checkpoint(path=path, meta=meta, model=model, ema=ema, state=state)


def find_resumable(root: Path) -> Checkpoint | None:
    """The newest valid checkpoint under ``root``; invalid ones are skipped with a warning."""
    root = Path(root)
    if root.is_dir():
        for tmp in root.glob(f"{TMP_PREFIX}*"):
            log.warning("ignoring incomplete checkpoint write %s", tmp)
    for path in reversed(list_checkpoints(root)):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s", exc)
    return None


def prune_checkpoints(root: Path, keep_last: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (and ``keep``); returns deleted."""
    ckpts = list_checkpoints(root)
    doomed = [p for p in ckpts[:-keep_last] if keep is None or p.resolve() != Path(keep).resolve()]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed
