"""Model directories: the artifact every stage hands to the next.

A trained model is a directory holding ``model.safetensors`` (or ``model.onnx``),
``config.json`` (what is needed to rebuild the network), ``metrics.json``,
``model_card.md`` and ``checksums.json`` (the SHA-256 of every other file). It is written
atomically (:func:`write_model_dir`, over :mod:`core.atomic`) and read without unpickling; every
file a loader reads is first checked against its checksum (:func:`verify_model_files`), so
flipped bytes are reported as a corrupt file, not loaded or mistaken for a mismatch of
architectures. Directories written before checksums existed load with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.atomic import atomic_dir, sha256_file
from core.errors import ModelLoadError
from core.serialization import tensors_for_safetensors

log = logging.getLogger(__name__)

REQUIRED = ("config.json",)
MANIFEST = "checksums.json"


def write_manifest(directory: Path) -> None:
    """Write ``checksums.json``: the SHA-256 of every file under ``directory``."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"sha256": files}, indent=1))


@contextlib.contextmanager
def write_model_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a model directory atomically with its checksums:
    ``with write_model_dir(out) as tmp: <write files into tmp>``."""
    with atomic_dir(out) as tmp:
        yield tmp
        write_manifest(tmp)


def verify_model_files(path: str | os.PathLike[str], names: Iterable[str]) -> None:
    """Check files ``names`` of model directory ``path`` against its ``checksums.json``.

    Raises ModelLoadError naming the file when one is corrupt, or is not covered by the
    checksums. A directory without ``checksums.json`` (written by an older version) is read
    with a warning."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        log.warning("%s has no %s: its files cannot be verified (re-export it)", path, MANIFEST)
        return
    try:
        digests = json.loads(manifest.read_text())["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{MANIFEST} is corrupt ({exc})",
            where=str(manifest),
            fix="restore the model directory from its source or re-export it",
        ) from exc
    for name in names:
        f = path / name
        if not f.is_file():
            continue  # the loader reports missing files in its own words
        if name not in digests:
            raise ModelLoadError(
                f"{name} is not covered by {MANIFEST} (added after the directory was written)",
                where=str(f),
                fix="re-export the model directory",
            )
        if sha256_file(f) != digests[name]:
            raise ModelLoadError(
                f"{name} is corrupt (checksum mismatch)",
                where=str(f),
                fix="restore the file from the training run or re-export the model",
            )


def save_model_dir(
    out: str | os.PathLike[str],
    model: torch.nn.Module,
    config: dict[str, Any],
    metrics: dict[str, Any],
    card: str,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write ``out`` atomically with weights, config, metrics and model card.

    ``extra_tensors`` maps further file names (``*.safetensors``) to tensors saved beside the
    weights, e.g. an anomaly memory bank."""
    out = Path(out)
    with write_model_dir(out) as tmp:
        save_file(tensors_for_safetensors(model.state_dict()), str(tmp / "model.safetensors"))
        for name, tensors in (extra_tensors or {}).items():
            save_file(tensors_for_safetensors(tensors), str(tmp / name))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "model_card.md").write_text(card)
    return out


def save_onnx_variant(
    out: str | os.PathLike[str],
    onnx_file: str | os.PathLike[str],
    config: dict[str, Any],
    step: str,
    details: dict[str, Any],
    title: str,
) -> Path:
    """Write ``out`` atomically as an ONNX model directory derived from a trained one:
    ``model.onnx`` (a copy of ``onnx_file``), the source's ``config`` with ``format: onnx`` and
    ``{"step": step, **details}`` appended to its ``compression`` history, ``metrics.json``
    with ``details`` and a model card titled ``title``."""
    import shutil

    out = Path(out)
    with write_model_dir(out) as tmp:
        shutil.copy2(onnx_file, tmp / "model.onnx")
        cfg = {
            **config,
            "format": "onnx",
            "compression": [*config.get("compression", []), {"step": step, **details}],
        }
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        (tmp / "metrics.json").write_text(json.dumps({step: details}, indent=2, default=str))
        (tmp / "model_card.md").write_text(
            f"# {title} — {step}\n\n" + "\n".join(f"- {k}: {v}" for k, v in details.items()) + "\n"
        )
    return out


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a model directory (PyTorch or ONNX), with errors naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(
            "model directory does not exist",
            where=str(path),
            fix="pass the directory a training run wrote",
        )
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(
            "model directory lacks config.json",
            where=str(path),
            fix="re-run training or export into this directory",
        )
    verify_model_files(path, ["config.json"])
    try:
        return json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"config.json is not valid JSON ({exc})",
            where=str(cfg_path),
            fix="restore the file from the training run",
        ) from exc


def update_model_config(path: str | os.PathLike[str], updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into a model directory's ``config.json`` and refresh its checksums.

    The directory is rebuilt beside itself (unchanged files hard-linked, after they pass their
    checksums) and swapped in atomically, so a crash leaves the old or the new directory,
    never a config that disagrees with ``checksums.json``. Returns the new config."""
    import shutil

    path = Path(path)
    cfg = read_config(path) | updates
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    keep = [p.relative_to(path).as_posix() for p in files]
    verify_model_files(path, [n for n in keep if n not in ("config.json", MANIFEST)])
    with write_model_dir(path) as tmp:
        for name in keep:
            if name in ("config.json", MANIFEST):
                continue
            dst = tmp / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path / name, dst)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(path / name, dst)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    return cfg


def read_model_dir(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of a model directory, with errors that name the missing piece."""
    config = read_config(path)
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(
            "model directory lacks model.safetensors",
            where=str(path),
            fix="re-run training or export into this directory",
        )
    verify_model_files(path, ["model.safetensors"])
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(
            f"weights cannot be read ({exc})",
            where=str(weights),
            fix="the file is corrupt; re-run training or restore it",
        ) from exc
    return config, state
