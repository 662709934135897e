"""``make demo``: the end-to-end job on the embedded defaults.

1. The training engine on real digits: SIGKILL mid-run, resume, bit-identical check
   (:mod:`core.reference.demo`).
2. The reference Prefect flow (embedded temporary Prefect server, ``PREFECT_HOME`` under the
   data root): train → evaluate → INT8 → parity gate → register → promote.
3. A summary table: metric, fp32 vs INT8 latency and size, registry version and alias.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def main() -> None:
    from core.reference import demo as engine_demo

    engine_demo.main()
    from flows.reference import reference_flow

    Console().print(
        "[bold]reference flow[/]: ingest → train → evaluate → INT8 → gate → register → promote"
    )
    s = reference_flow(epochs=4)
    b = s["benchmark"]
    t = Table(title="DeepVerticals demo — digits reference flow")
    t.add_column("what")
    t.add_column("fp32", justify="right")
    t.add_column("INT8", justify="right")
    t.add_row("test accuracy", f"{s['fp32_accuracy']:.4f}", f"{s['int8_accuracy']:.4f}")
    for k in ("b1", "b8"):
        t.add_row(f"latency {k} (ms, ONNX Runtime)", f"{b['fp32'][k]:.3f}", f"{b['int8'][k]:.3f}")
    t.add_row(
        "size (KB)", f"{b['fp32']['size_bytes'] / 1e3:.1f}", f"{b['int8']['size_bytes'] / 1e3:.1f}"
    )
    t.add_row("registry", "", f"{s['model_name']} v{s['version']} ({s['alias']})")
    t.add_row("promotion", "", s["promotion_reason"])
    t.add_row("outputs", "", s["run_dir"])
    Console().print(t)


if __name__ == "__main__":
    main()
