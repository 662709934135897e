"""Training checkpoints: atomic, complete, verified, pickle-free.

A checkpoint is a directory ``step-<8 digits>`` holding

* ``model.safetensors`` — the model's state dict (full, unsharded);
* ``ema.safetensors`` — the EMA weights, when EMA is on;
* ``state.json`` + ``state.safetensors`` — optimizer, scheduler, loss scaler, per-rank RNG
  (python/numpy/torch/cuda), per-rank comm-hook state and, mid-accumulation, the gradients;
* ``meta.json`` — format version, the id of the run that wrote it, epoch, global step, batch
  position inside the epoch, accumulation micro-step, world size, metrics, the SHA-256 of
  every other file, and ``meta_sha256``, the SHA-256 of the metadata itself.

It is written into a temporary directory, fsync'ed and renamed (:mod:`core.atomic`), so a
crash never leaves a partial ``step-*``. Everything that is loaded is verified first: the
metadata against its own checksum (a changed ``batch_in_epoch`` would resume at the wrong
batch), and every file that is read against the checksum the metadata lists for it (a
checkpoint whose list lacks a file it needs is refused). ``resume="auto"`` walks from the
newest checkpoint to older ones and skips, with a warning, any that is incomplete or corrupt.

Checkpoints belong to a run: its ``run_id`` is in the metadata, retention
(:func:`prune_checkpoints`) counts and deletes only the run's own checkpoints, and
:func:`foreign_checkpoints` lists what other runs left in a directory (the Trainer refuses
to start a fresh run there unless told to overwrite). Loading goes through safetensors and
JSON only: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
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

FORMAT_VERSION = 2  # 2: run ids and a checksum over the metadata itself
_STEP_DIR = re.compile(r"^step-(\d{8})$")
# Files every checkpoint has and every load reads; ema.safetensors is read when present.
REQUIRED_FILES = ("model.safetensors", "state.json", "state.safetensors")


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


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the metadata (without its own digest) in canonical JSON."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically and return its path.

    ``meta`` should carry the writer's ``run_id``."""
    target = Path(root) / checkpoint_name(step)
    with atomic_dir(target) as tmp:
        save_file(tensors_for_safetensors(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(tensors_for_safetensors(ema_state), str(tmp / "ema.safetensors"))
        save_tree(state, tmp / "state")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        full_meta = {"format": FORMAT_VERSION, "step": step, **meta, "files": files}
        # the digest is taken over the JSON form, the one a reader will see
        full_meta = json.loads(json.dumps(full_meta, allow_nan=True))
        full_meta["meta_sha256"] = _meta_digest(full_meta)
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"unsupported checkpoint format {found!r}",
            where=str(path),
            fix=f"this version reads format {FORMAT_VERSION} (format 1 had no metadata "
            "checksum); start a fresh run or use the version that wrote it",
        )
    if meta.get("meta_sha256") != _meta_digest(meta):
        raise CheckpointError(
            "meta.json is corrupt (its checksum does not match its content)",
            where=str(meta_path),
            fix="delete the checkpoint; resume from an older one",
        )
    return meta


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Verify the metadata's own checksum, that it lists every file a load reads, and that
    each listed file exists with its recorded SHA-256. Returns the metadata."""
    path = Path(path)
    meta = read_meta(path)
    files = meta.get("files")
    needed = list(REQUIRED_FILES) + (
        ["ema.safetensors"] if (path / "ema.safetensors").exists() else []
    )
    if not isinstance(files, dict) or any(n not in files for n in needed):
        missing = [n for n in needed if not isinstance(files, dict) or n not in files]
        raise CheckpointError(
            f"meta.json lists no checksum for {', '.join(missing)}: the files cannot be verified",
            where=str(path),
            fix="delete the checkpoint; resume from an older one",
        )
    for name, digest in files.items():
        f = path / name
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


def run_id_of(path: Path) -> str | None:
    """The id of the run that wrote checkpoint ``path``; None when its metadata is unreadable."""
    try:
        return read_meta(path).get("run_id")
    except CheckpointError:
        return None


def foreign_checkpoints(root: Path, run_id: str | None) -> list[Path]:
    """Checkpoints under ``root`` not written by run ``run_id`` (unreadable ones included)."""
    return [p for p in list_checkpoints(root) if run_id is None or run_id_of(p) != run_id]


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint, verifying everything it reads first (:func:`verify_checkpoint`)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            "checkpoint directory does not exist",
            where=str(path),
            fix="pass an existing step-* directory or resume='auto'",
        )
    meta = verify_checkpoint(path)
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


def prune_checkpoints(
    root: Path, keep_last: int, run_id: str, keep: Path | None = None
) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints of run ``run_id`` (and ``keep``);
    other runs' checkpoints, and unreadable ones, are neither counted nor deleted. Returns
    the deleted paths."""
    mine = [p for p in list_checkpoints(root) if run_id_of(p) == run_id]
    doomed = [p for p in mine[:-keep_last] if keep is None or p.resolve() != Path(keep).resolve()]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed
