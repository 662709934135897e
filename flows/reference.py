"""The reference flow on the digits model: the shape every domain flow follows.

ingest → train → evaluate → export + quantize (INT8) → parity gate → register →
promote-if-better → serve (reload a running server). It runs with no server at all (Prefect's
embedded temporary server; ``PREFECT_HOME`` isolated under the data root by the Makefile and
tests) and returns a summary: metric, fp32 vs INT8 latency and size, registry version/alias.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.tasks import (
    IO_RETRIES,
    ParityGateError,
    eval_cache_key,
    hash_dataset_task,
    publish_metrics,
    publish_model_card,
    release,
    release_fields,
    run_root,
)


@task(name="ingest-digits", cache_policy=NO_CACHE, **IO_RETRIES)
def ingest(size: int, seed: int) -> dict[str, Any]:
    from core.reference.digits import load_digits_splits

    splits = load_digits_splits(size, seed)
    arrays = {f"{k}_{i}": t.numpy() for k, ds in splits.items() for i, t in enumerate(ds.tensors)}
    return {"sizes": {k: len(v) for k, v in splits.items()}, "arrays": arrays}


@task(name="train-digits", cache_policy=NO_CACHE)  # training never retries: a failure is a finding
def train(out_dir: str, epochs: int, seed: int) -> dict[str, float]:
    from core.reference.digits import DigitsConfig, default_trainer_config, train_digits

    tcfg = default_trainer_config()
    tcfg.max_epochs, tcfg.progress = epochs, "plain"
    _, _, test = train_digits(DigitsConfig(out_dir=out_dir, seed=seed, trainer=tcfg))
    return test


@task(name="evaluate", cache_key_fn=eval_cache_key)
def evaluate(model_dir: str, dataset_hash: str, name: str) -> float:
    from core.reference.digits import evaluate_model_dir

    return evaluate_model_dir(model_dir)


@task(name="export-and-quantize", cache_policy=NO_CACHE)
def compress(src: str, fp32_out: str, int8_out: str) -> dict[str, Any]:
    from core.compress.quantize import Int8StaticConfig
    from core.compress.workflow import calibration_data, export_model_dir, quantize_model_dir
    from core.models import load_model_dir

    export_model_dir(src, fp32_out)
    _, cfg = load_model_dir(src)
    q = quantize_model_dir(
        src, int8_out, Int8StaticConfig(calibration="minmax"), calibration_data(cfg, None)
    )
    return {"reduce_range": q.reduce_range}


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(fp32_dir: str, int8_dir: str) -> dict[str, Any]:
    from core.compress.workflow import bench_model_dir

    a, b = bench_model_dir(fp32_dir, (1, 8)), bench_model_dir(int8_dir, (1, 8))
    return {
        "fp32": {"size_bytes": a.size_bytes, **a.latency_ms},
        "int8": {"size_bytes": b.size_bytes, **b.latency_ms},
    }


@task(name="parity-gate", cache_policy=NO_CACHE)
def parity_gate(fp32_metric: float, int8_metric: float, max_drop: float) -> float:
    drop = fp32_metric - int8_metric
    if drop > max_drop:
        raise ParityGateError(
            f"INT8 accuracy {int8_metric:.4f} is {drop:.4f} below fp32 {fp32_metric:.4f}",
            where="parity gate",
            fix=f"allowed drop is {max_drop}; try MSE calibration or QAT",
        )
    return drop


@flow(name="digits-reference", log_prints=True)
def reference_flow(
    run_dir: str | None = None,
    epochs: int = 4,
    seed: int = 0,
    model_name: str = "digits",
    max_int8_drop: float = 0.01,
    promote_margin: float = 0.0,
    server_url: str | None = None,
) -> dict[str, Any]:
    """Train, compress, gate, register and promote the digits model; returns a summary."""
    log = get_run_logger()
    root = run_root("reference", run_dir)
    data = ingest(size=8, seed=seed)
    dataset_hash = hash_dataset_task(arrays=data["arrays"])
    test = train(str(root / "fp32"), epochs, seed)
    quant = compress(str(root / "fp32"), str(root / "fp32-onnx"), str(root / "int8"))
    fp32_acc = evaluate(str(root / "fp32-onnx"), dataset_hash, "fp32")
    int8_acc = evaluate(str(root / "int8"), dataset_hash, "int8")
    drop = parity_gate(fp32_acc, int8_acc, max_int8_drop)
    bench = benchmark(str(root / "fp32-onnx"), str(root / "int8"))
    lineage = {
        "dataset_hash": dataset_hash,
        "config": {"epochs": epochs, "seed": seed, "quant": quant},
        "flow": "digits-reference",
    }
    from core.reference.digits import evaluate_model_dir

    version, decision, reload = release(
        model_name,
        str(root / "int8"),
        {"test_accuracy": int8_acc},
        lineage,
        evaluate_model_dir,
        promote_margin,
        server_url,
    )
    summary = {
        "run_dir": str(root),
        "dataset_hash": dataset_hash,
        "sizes": data["sizes"],
        "train_test_accuracy": test["test/accuracy"],
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": int8_acc,
        "int8_drop": drop,
        "benchmark": bench,
        **release_fields(model_name, version, decision, reload),
    }
    rows = [
        {"what": "test accuracy fp32 / INT8", "value": f"{fp32_acc:.4f} / {int8_acc:.4f}"},
        {
            "what": "latency b1 fp32 / INT8 (ms)",
            "value": f"{bench['fp32']['b1']:.3f} / {bench['int8']['b1']:.3f}",
        },
        {
            "what": "size fp32 / INT8 (bytes)",
            "value": f"{bench['fp32']['size_bytes']} / {bench['int8']['size_bytes']}",
        },
        {"what": "registry", "value": f"{model_name} v{version} ({summary['alias']})"},
        {"what": "promotion", "value": decision.reason},
    ]
    publish_metrics("digits-reference-summary", rows, "Reference flow summary")
    publish_model_card("digits-reference-model-card", str(root / "int8"))
    log.info(
        "digits %s v%s: fp32 %.4f, int8 %.4f, %s",
        model_name,
        version,
        fp32_acc,
        int8_acc,
        decision.reason,
    )
    return summary
