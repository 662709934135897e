"""Prefect tasks every domain flow uses: thin wrappers over core functions, with policies.

Policies are explicit: I/O tasks (hashing, registering, reloading a server) retry; training
and compression never retry and never cache (``NO_CACHE``); evaluation caches on the content
of the model file and the data-set hash, so a re-run on the same model and data is free.
Metrics and model cards are published as Prefect artifacts with stable keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from core.datasets import hash_arrays, hash_directory
from core.errors import DVError
from core.registry import ModelRegistry, Promotion

IO_RETRIES = {"retries": 3, "retry_delay_seconds": 2}


def run_root(domain: str, run_dir: str | None) -> Path:
    """A flow run's output folder: ``run_dir``, or a timestamped one under the data root."""
    import time

    from core.paths import data_root

    root = (
        Path(run_dir) if run_dir else data_root() / "runs" / domain / time.strftime("%Y%m%d-%H%M%S")
    )
    root.mkdir(parents=True, exist_ok=True)
    return root


class ParityGateError(DVError):
    """The INT8 model lost more accuracy than the flow allows."""


def _weights_digest(model_dir: str) -> str:
    d = Path(model_dir)
    f = d / "model.onnx" if (d / "model.onnx").is_file() else d / "model.safetensors"
    return hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "missing"


def eval_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """Evaluation is cached on (model weights, data-set hash, metric name)."""
    return f"eval-{_weights_digest(parameters['model_dir'])}-{parameters['dataset_hash']}-{parameters.get('name', '')}"


@task(name="hash-dataset", cache_policy=NO_CACHE, **IO_RETRIES)
def hash_dataset_task(arrays: dict[str, Any] | None = None, directory: str | None = None) -> str:
    return hash_directory(directory) if directory else hash_arrays(arrays or {})


@task(name="publish-metrics", cache_policy=NO_CACHE)
def publish_metrics(key: str, rows: list[dict[str, Any]], description: str) -> None:
    create_table_artifact(key=key, table=rows, description=description)


@task(name="publish-model-card", cache_policy=NO_CACHE)
def publish_model_card(key: str, model_dir: str) -> None:
    card = Path(model_dir) / "model_card.md"
    create_markdown_artifact(
        key=key, markdown=card.read_text() if card.is_file() else "(no model card)"
    )


@task(name="register-model", cache_policy=NO_CACHE, **IO_RETRIES)
def register_task(
    name: str, model_dir: str, metrics: dict[str, float], lineage: dict[str, Any]
) -> str:
    mv = ModelRegistry().register(name, model_dir, metrics=metrics, lineage=lineage)
    get_run_logger().info("registered %s version %s", name, mv.version)
    return mv.version


@task(name="promotion-gate", cache_policy=NO_CACHE)
def promote_task(name: str, version: str, evaluate: Any, margin: float) -> Promotion:
    decision = ModelRegistry().promote_if_better(name, version, evaluate, margin=margin)
    get_run_logger().info(
        "promotion of %s v%s: %s (%s)",
        name,
        version,
        "promoted" if decision.promoted else "kept as candidate",
        decision.reason,
    )
    return decision


@task(name="reload-server", cache_policy=NO_CACHE, **IO_RETRIES)
def reload_server_task(server_url: str | None, api_key: str | None = None) -> dict[str, Any]:
    """Ask a running server to pick up the registry's new production version."""
    if not server_url:
        return {"reloaded": False, "reason": "no server to reload"}
    headers = {"x-api-key": api_key} if api_key else {}
    r = httpx.post(f"{server_url.rstrip('/')}/v1/admin/reload", headers=headers, timeout=60)
    r.raise_for_status()
    return r.json()


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    return "\n".join(
        ["| what | value |", "|---|---|", *(f"| {r['what']} | {r['value']} |" for r in rows)]
    )


def release(
    name: str,
    model_dir: str,
    metrics: dict[str, float],
    lineage: dict[str, Any],
    evaluate: Any,
    margin: float,
    server_url: str | None,
) -> tuple[str, Promotion, dict[str, Any]]:
    """Every domain flow's tail, called inside the flow: register the model, promote it if it
    beats production on ``evaluate``, and reload a running server when it was promoted."""
    version = register_task(name, model_dir, metrics, lineage)
    decision = promote_task(name, version, evaluate, margin)
    reload = (
        reload_server_task(server_url)
        if decision.promoted
        else {"reloaded": False, "reason": "not promoted"}
    )
    return version, decision, reload


def release_fields(
    name: str, version: str, decision: Promotion, reload: dict[str, Any]
) -> dict[str, Any]:
    """The part of every flow's summary that says what :func:`release` did."""
    return {
        "model_name": name,
        "version": version,
        "alias": "production" if decision.promoted else "candidate",
        "promotion_reason": decision.reason,
        "server_reload": reload,
    }
