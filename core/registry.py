"""Model registry on MLflow: versions, lineage, and the ``candidate`` / ``production`` aliases.

Local by default (SQLite under the data root, artifacts beside it; nothing to start);
``$MLFLOW_TRACKING_URI`` points it at any MLflow server. A version carries its model
directory (weights, config, metrics, model card) as run artifacts, and its lineage as tags:
data-set hash, config, git commit, and ``status=complete`` once every file is logged.

:meth:`ModelRegistry.promote_if_better` moves ``production`` to a new version only if it beats
the current one *on the same held-out set* by ``margin``; otherwise the version stays
``candidate`` with the reason recorded on it. A version that is not complete (a failed or
partial run) is never promoted.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DVError, ModelLoadError
from core.paths import default_artifact_location, default_tracking_uri

CANDIDATE, PRODUCTION = "candidate", "production"


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


class ModelRegistry:
    def __init__(
        self, tracking_uri: str | None = None, experiment: str = "deepverticals-registry"
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri or default_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        location = default_artifact_location() if self.uri.startswith("sqlite") else None
        self.experiment_id = (
            exp.experiment_id if exp else self.client.create_experiment(experiment, location)
        )

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
        from mlflow.exceptions import MlflowException

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise RegistryError(
                "model directory lacks config.json",
                where=str(model_dir),
                fix="register a directory written by training, export or quantization",
            )
        if not any((model_dir / f).is_file() for f in ("model.safetensors", "model.onnx")):
            raise RegistryError(
                "model directory has no weights (model.safetensors or model.onnx)",
                where=str(model_dir),
                fix="re-run the step that writes the model",
            )
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
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        source = f"{self.client.get_run(rid).info.artifact_uri}/model"
        mv = self.client.create_model_version(
            name, source, run_id=rid, tags={**tags, "status": "complete"}
        )
        self.client.set_registered_model_alias(name, CANDIDATE, mv.version)
        return self.get(name, version=mv.version)

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
        except (DVError, ModelLoadError) as exc:
            return self._decide(
                name, cand, previous, False, f"candidate could not be evaluated: {exc}"
            )
        if prod is None:
            return self._decide(name, cand, None, True, "no production version yet", c)
        if prod.version == cand.version:
            return self._decide(name, cand, previous, False, "already production", c)
        p = float(evaluate(prod.path))
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

    def current(self) -> Callable[[], Any]:
        """A factory for the version the alias points at now (start-up)."""
        mv = self.registry.get(self.name, alias=self.alias)
        self.served = mv.version
        return self._factory(mv)

    def check(self) -> Callable[[], Any] | None:
        mv = self.registry.find(self.name, self.alias)
        if mv is None or mv.version == self.served:
            return None
        self.served = mv.version
        return self._factory(mv)

    def _factory(self, mv: ModelVersion) -> Callable[[], Any]:
        if self.predictor is not None:
            return lambda: self.predictor(mv.path, mv.name, mv.version)
        from core.serve.predictor import ModelDirPredictor

        return lambda: ModelDirPredictor(mv.path, name=mv.name, version=mv.version)
