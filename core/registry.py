"""Model registry on MLflow: versions, lineage, and the ``candidate`` / ``production`` aliases.

Local by default (SQLite under the data root, artifacts beside it; nothing to start);
``$MLFLOW_TRACKING_URI`` points it at any MLflow server. A version carries its model
directory (weights, config, metrics, model card) as run artifacts, and its lineage as tags:
data-set hash, config, git commit, and ``status=complete`` once every file is logged.

:meth:`ModelRegistry.promote_if_better` moves ``production`` to a new version only if it beats
the current one *on the same held-out set* by ``margin``; otherwise the version stays
``candidate`` with the reason recorded on it. A version that is not complete (a failed or
partial run) is never promoted; a candidate whose evaluation fails is rejected with the
error recorded; a production version that can no longer be evaluated (corrupt, deleted)
never blocks a good candidate: it is replaced, and the reason says why.

Registration is safe when several processes register at once (the first version of a new
name included): creating the registered model is idempotent and the writes SQLite may
refuse under contention (a locked database, a version number taken a moment earlier) are
retried. A model directory is verified before it is registered: every file against its
``checksums.json``, or, for a directory without one, its weights must load; a corrupt one is
refused, so ``status=complete`` means the files are whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DVError, ModelLoadError
from core.paths import default_artifact_location, default_tracking_uri

CANDIDATE, PRODUCTION = "candidate", "production"
log = logging.getLogger(__name__)
# what SQLite-backed MLflow raises when two writers collide; the write did not happen
_TRANSIENT = ("database is locked", "unique constraint", "integrityerror", "operationalerror")


class RegistryError(DVError):
    """The registry cannot do what was asked (unknown model, missing version, bad model dir)."""


@dataclass
class ModelVersion:
    name: str
    version: str
    path: Path  # local model directory
    metrics: dict[str, float]
    tags: dict[str, str]
    aliases: list[str]


@dataclass
class Promotion:
    promoted: bool
    reason: str
    candidate: str
    previous: str | None
    candidate_metric: float | None = None
    production_metric: float | None = None


def git_commit(cwd: str | Path | None = None) -> str:
    """The current git commit, or ``"unknown"`` outside a repository."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _retry(fn: Callable[[], Any], what: str, attempts: int = 10) -> Any:
    """Run an MLflow write, retrying the errors of a concurrent writer with jittered backoff."""
    from mlflow.exceptions import MlflowException

    delay = 0.05
    for i in range(attempts):
        try:
            return fn()
        except MlflowException as exc:
            if i == attempts - 1 or not any(t in str(exc).lower() for t in _TRANSIENT):
                raise
            log.debug("%s collided with another writer (%s); retrying", what, exc)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a local ``sqlite:///`` store (a no-op for other stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _already_exists(exc: Exception) -> bool:
    return "RESOURCE_ALREADY_EXISTS" in str(getattr(exc, "error_code", "")) or (
        "already exists" in str(exc).lower() or "unique constraint" in str(exc).lower()
    )


def verify_model_dir(model_dir: Path) -> None:
    """Refuse a corrupt model directory: files against ``checksums.json``, else the weights
    must load. Raises RegistryError naming the file."""
    from core.artifacts import MANIFEST, verify_model_files

    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    try:
        if (model_dir / MANIFEST).is_file():
            verify_model_files(model_dir, [f for f in files if f != MANIFEST])
            return
        if (model_dir / "model.onnx").is_file():
            import onnx

            onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
        if (model_dir / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                    f.get_tensor(key)
    except ModelLoadError as exc:
        raise RegistryError(
            f"model directory is corrupt: {exc.what}",
            where=exc.where or str(model_dir),
            fix="re-run the step that wrote it; nothing was registered",
        ) from exc
    except Exception as exc:  # onnx / safetensors raise their own types for bad bytes
        raise RegistryError(
            f"model directory is corrupt: its weights cannot be loaded ({str(exc)[:200]})",
            where=str(model_dir),
            fix="re-run the step that wrote it; nothing was registered",
        ) from exc


class ModelRegistry:
    def __init__(
        self, tracking_uri: str | None = None, experiment: str = "deepverticals-registry"
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        # the first use of a new SQLite store creates its schema: two processes doing that at
        # once break MLflow's migration, so the first touch is serialised by a file lock
        with _sqlite_lock(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            self.experiment_id = _retry(lambda: self._experiment(experiment), "create experiment")
            self.client.search_registered_models(max_results=1)  # the registry store, too

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = default_artifact_location() if self.uri.startswith("sqlite") else None
        try:
            return self.client.create_experiment(name, location)
        except MlflowException as exc:  # another process created it a moment ago
            if not _already_exists(exc):
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    # ------------------------------------------------------------------ writing
    def register(
        self,
        name: str,
        model_dir: str | Path,
        *,
        metrics: dict[str, float] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Log ``model_dir`` and register it as a new version of ``name`` with alias ``candidate``."""

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise RegistryError(
                "model directory lacks config.json",
                where=str(model_dir),
                fix="register a directory written by training, export or quantization",
            )
        # model.safetensors / model.onnx, or an ensemble's several (finance_risk: boosting.onnx...)
        if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.onnx")):
            raise RegistryError(
                "model directory has no weights (model.safetensors or model.onnx)",
                where=str(model_dir),
                fix="re-run the step that writes the model",
            )
        verify_model_dir(model_dir)
        metrics = dict(metrics or {})
        if not metrics and (model_dir / "metrics.json").is_file():
            metrics = {
                k: float(v)
                for k, v in json.loads((model_dir / "metrics.json").read_text()).items()
                if isinstance(v, int | float)
            }
        lineage = {"git_commit": git_commit(), **(lineage or {})}
        tags = {
            k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
            for k, v in lineage.items()
        }
        run = self.client.create_run(self.experiment_id, run_name=f"register-{name}", tags=tags)
        rid = run.info.run_id
        try:
            for k, v in metrics.items():
                self.client.log_metric(rid, k.replace("/", "_"), float(v))
            self.client.log_artifacts(rid, str(model_dir), artifact_path="model")
        except Exception:
            self.client.set_terminated(rid, "FAILED")
            raise
        self.client.set_terminated(rid, "FINISHED")
        _retry(lambda: self._ensure_model(name), "create registered model")
        source = f"{self.client.get_run(rid).info.artifact_uri}/model"
        mv = _retry(
            lambda: self.client.create_model_version(
                name, source, run_id=rid, tags={**tags, "status": "complete"}
            ),
            "create model version",
        )
        _retry(
            lambda: self.client.set_registered_model_alias(name, CANDIDATE, mv.version),
            "set alias",
        )
        return self.get(name, version=mv.version)

    def _ensure_model(self, name: str) -> None:
        """Create registered model ``name`` unless it exists (idempotent across processes)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return
        except MlflowException:
            pass
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if not _already_exists(exc):
                raise

    # ------------------------------------------------------------------ reading
    def get(
        self, name: str, *, alias: str | None = None, version: str | None = None
    ) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            mv = (
                self.client.get_model_version_by_alias(name, alias)
                if alias
                else self.client.get_model_version(name, str(version))
            )
        except MlflowException as exc:
            raise RegistryError(
                f"model {name!r} has no {'alias ' + alias if alias else 'version ' + str(version)}",
                where=self.uri,
                fix="register a version first",
            ) from exc
        run = self.client.get_run(mv.run_id)
        return ModelVersion(
            name,
            str(mv.version),
            self._local(mv.source),
            dict(run.data.metrics),
            dict(mv.tags),
            list(mv.aliases),
        )

    def find(self, name: str, alias: str = PRODUCTION) -> ModelVersion | None:
        """The version behind ``alias``, or None."""
        try:
            return self.get(name, alias=alias)
        except RegistryError:
            return None

    def _local(self, source: str) -> Path:
        if source.startswith("file://"):
            from urllib.parse import unquote, urlparse

            return Path(unquote(urlparse(source).path))
        import mlflow.artifacts

        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=self.uri))

    # ------------------------------------------------------------------ promotion
    def promote_if_better(
        self,
        name: str,
        version: str,
        evaluate: Callable[[Path], float],
        *,
        margin: float = 0.0,
        higher_is_better: bool = True,
    ) -> Promotion:
        """Evaluate candidate and production on the same held-out set; promote if better by ``margin``."""
        cand = self.get(name, version=version)
        prod = self.find(name, PRODUCTION)
        previous = prod.version if prod else None
        if cand.tags.get("status") != "complete" or not (cand.path / "config.json").is_file():
            return self._decide(
                name, cand, previous, False, "version is incomplete (failed or partial run)"
            )
        try:
            c = float(evaluate(cand.path))
        except Exception as exc:  # ONNX Runtime, corrupt files, bugs: the reason is recorded
            return self._decide(
                name, cand, previous, False, f"candidate could not be evaluated: {_why(exc)}"
            )
        if prod is None:
            return self._decide(name, cand, None, True, "no production version yet", c)
        if prod.version == cand.version:
            return self._decide(name, cand, previous, False, "already production", c)
        try:
            p = float(evaluate(prod.path))
        except Exception as exc:  # a broken production never blocks a good candidate
            return self._decide(
                name,
                cand,
                previous,
                True,
                f"production v{prod.version} could not be evaluated ({_why(exc)}); "
                "the candidate replaces it",
                c,
            )
        gain = (c - p) if higher_is_better else (p - c)
        if gain > margin:
            return self._decide(
                name,
                cand,
                previous,
                True,
                f"beats production v{prod.version} by {gain:.4g} (> margin {margin:g})",
                c,
                p,
            )
        return self._decide(
            name,
            cand,
            previous,
            False,
            f"does not beat production v{prod.version} by more than {margin:g} "
            f"(candidate {c:.4g}, production {p:.4g})",
            c,
            p,
        )

    def _decide(
        self,
        name: str,
        cand: ModelVersion,
        previous: str | None,
        promote: bool,
        reason: str,
        c: float | None = None,
        p: float | None = None,
    ) -> Promotion:
        self.client.set_model_version_tag(
            name, cand.version, "promotion", "promoted" if promote else "rejected"
        )
        self.client.set_model_version_tag(name, cand.version, "promotion_reason", reason)
        if promote:
            self.client.set_registered_model_alias(name, PRODUCTION, cand.version)
        return Promotion(promote, reason, cand.version, previous, c, p)


def _why(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, DVError) else f"{type(exc).__name__}: {exc}"
    return text[:500]


class RegistryWatcher:
    """For :func:`core.serve.create_app`: a new predictor factory whenever ``alias`` moves."""

    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        alias: str = PRODUCTION,
        predictor: Callable[[Path, str, str], Any] | None = None,
    ) -> None:
        self.registry, self.name, self.alias = registry, name, alias
        self.predictor = predictor
        self.served: str | None = None
        self.pending: str | None = None  # offered by check(), served once confirm()ed

    def current(self) -> Callable[[], Any]:
        """A factory for the version the alias points at now (start-up)."""
        mv = self.registry.get(self.name, alias=self.alias)
        self.served = mv.version
        return self._factory(mv)

    def check(self) -> Callable[[], Any] | None:
        """A factory when the alias points at a version not served yet. The version counts as
        served only after :meth:`confirm` (the server calls it once the load succeeded), so a
        version that failed to load is offered again on the next check."""
        mv = self.registry.find(self.name, self.alias)
        if mv is None or mv.version == self.served:
            return None
        self.pending = mv.version
        return self._factory(mv)

    def confirm(self) -> None:
        """The version the last :meth:`check` offered is now served."""
        if self.pending is not None:
            self.served, self.pending = self.pending, None

    def _factory(self, mv: ModelVersion) -> Callable[[], Any]:
        if self.predictor is not None:
            return lambda: self.predictor(mv.path, mv.name, mv.version)
        from core.serve.predictor import ModelDirPredictor

        return lambda: ModelDirPredictor(mv.path, name=mv.name, version=mv.version)
