"""Exception types for bad input and unrecoverable states.

Every error carries three parts a user needs: *what* went wrong, *where* (file, row, tag,
layer, rank...) and *what to do*. ``str(err)`` renders them on one line, which is what the
CLIs print before exiting with status 2. This module is deliberately dependency-free so
that any layer can raise these without importing torch.
"""

from __future__ import annotations

import re


class DVError(Exception):
    """Base class: a failure a user can act on.

    Args:
        what: what was wrong, e.g. ``"checkpoint is truncated"``.
        where: where it was found, e.g. a path, ``"row 17"``, ``"layer features.3"``.
        fix: what to do about it, e.g. ``"delete the directory and resume from the previous one"``.
    """

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"at {self.where}")
        msg = " ".join(parts)
        if self.fix:
            msg += f" — {self.fix}"
        return msg


class ConfigError(DVError, ValueError):
    """A configuration value is invalid or two values contradict each other."""


class DataError(DVError, ValueError):
    """Input data is unreadable, empty, of the wrong schema/modality, or holds NaNs."""


class CheckpointError(DVError):
    """A checkpoint is missing, incomplete, corrupt, or incompatible with this run."""


class ModelLoadError(DVError):
    """A model directory is missing files, or its weights do not match its config."""


class DistributedError(DVError):
    """The distributed set-up is inconsistent (world size, backend, launcher)."""


class NonFiniteError(DVError, FloatingPointError):
    """Training produced non-finite losses or gradients repeatedly; the run was stopped."""


class DependencyError(DVError, ImportError):
    """An optional package needed for this feature is not installed."""


def require(module: str, *, extra: str | None = None, feature: str = ""):
    """Import an optional module or raise :class:`DependencyError` naming what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the package
        hint = f"pip install 'deepverticals[{extra}]'" if extra else f"pip install {module}"
        raise DependencyError(
            f"{feature or module} needs the package '{module}'", fix=f"install it: {hint}"
        ) from exc


_ABS_PATH = re.compile(r"(?<![\w.:])/(?:[^\s/'\"]+/)+")


def public_text(text: str | None) -> str | None:
    """``text`` with absolute directories cut to their last part, for anything a client sees
    (responses, pages): never where the server keeps its files
    (``/srv/models/v3/model.onnx`` -> ``model.onnx``)."""
    return None if text is None else _ABS_PATH.sub("", text)
