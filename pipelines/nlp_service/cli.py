"""``nlp-service``: the nlp_service command line.

Thin by rule: each command builds the config dataclasses a Python caller builds, calls the
pipeline function and reports. Errors print one line and exit 2. A typical session::

    nlp-service synth --out data/nlp_service
    nlp-service train --out data/runs/nlp_service/model            # full fine-tuning
    nlp-service train --few-shot 10 --out data/runs/nlp_service/fewshot
    nlp-service evaluate data/runs/nlp_service/model                # the hand-written set
    nlp-service evaluate data/runs/nlp_service/model --data my_messages.jsonl --out eval/
    nlp-service compress data/runs/nlp_service/model
    nlp-service chat data/runs/nlp_service/model
    nlp-service serve data/runs/nlp_service/model --store data/runs/nlp_service/conv.sqlite
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from core.cliutil import domain_app, exits_on_error

app = domain_app("Customer-service dialogue: synthesise, train, evaluate, compress, chat, serve.")


@app.command()
@exits_on_error
def synth(
    out: Annotated[Path, typer.Option(help="folder for messages.jsonl and dialogues.jsonl")] = Path(
        "data/nlp_service"
    ),
    per_intent: Annotated[int, typer.Option(help="messages per intent")] = 120,
    dialogues: Annotated[int, typer.Option(help="multi-turn dialogues")] = 200,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 0,
) -> None:
    """Generate labelled messages (with slot spans) and dialogues (with gold state)."""
    from pipelines.nlp_service.config import SynthConfig
    from pipelines.nlp_service.synth import write_dataset

    paths = write_dataset(SynthConfig(per_intent=per_intent, dialogues=dialogues, seed=seed), out)
    for k, p in paths.items():
        typer.echo(f"{k}: {p}")


@app.command()
@exits_on_error
def train(
    data: Annotated[
        Path | None, typer.Option(help="JSONL/CSV of {text, intent}; default: generated")
    ] = None,
    out: Annotated[Path, typer.Option(help="model directory to write")] = Path(
        "data/runs/nlp_service/model"
    ),
    few_shot: Annotated[
        int | None, typer.Option("--few-shot", help="K examples per intent (SetFit-style)")
    ] = None,
    epochs: Annotated[int, typer.Option(help="full fine-tuning epochs")] = 3,
    per_intent: Annotated[int, typer.Option(help="generated messages per intent")] = 120,
    max_steps: Annotated[int | None, typer.Option(help="cap optimizer steps per phase")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fine-tune the encoder with intent and slot heads (or few-shot with --few-shot K)."""
    from pipelines.nlp_service.config import SynthConfig, TrainConfig
    from pipelines.nlp_service.train import train as run

    cfg = TrainConfig(
        data=str(data) if data else None,
        out_dir=str(out),
        few_shot=few_shot,
        epochs=epochs,
        synth=SynthConfig(per_intent=per_intent, seed=seed),
        max_steps=max_steps,
        seed=seed,
    )
    path = run(cfg)
    typer.echo(f"model: {path}")
    typer.echo((path / "metrics.json").read_text())


@app.command()
@exits_on_error
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="model directory")],
    data: Annotated[
        Path | None, typer.Option(help="JSONL/CSV to judge on; default: the hand-written set")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="folder for report.json + confusion.png")] = None,
    backend: Annotated[str, typer.Option(help="onnx (the served file) or torch")] = "onnx",
) -> None:
    """Accuracy, macro-F1, out-of-scope precision/recall, per-intent table, confusion matrix."""
    from pipelines.nlp_service.data import independent_set, read_examples
    from pipelines.nlp_service.evaluate import confusion_plot, intent_report
    from pipelines.nlp_service.model import Analyzer

    an = Analyzer(model_dir, prefer=backend)
    examples = read_examples(data, intents=tuple(an.intents)) if data else independent_set()
    rep = intent_report(an, examples)
    typer.echo(
        f"{rep['n']} messages: accuracy {rep['accuracy']:.3f}  macro-F1 {rep['macro_f1']:.3f}  "
        f"out-of-scope precision {rep['oos_precision']:.3f} recall {rep['oos_recall']:.3f}"
    )
    typer.echo(f"{'intent':<24} {'prec':>6} {'recall':>6} {'f1':>6} {'n':>4}")
    for k, r in rep["per_intent"].items():
        typer.echo(
            f"{k:<24} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} {r['support']:4d}"
        )
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(rep, indent=2))
        typer.echo(f"confusion matrix: {confusion_plot(rep, out / 'confusion.png')}")


@app.command()
@exits_on_error
def compress(
    model_dir: Annotated[Path, typer.Argument(help="model directory (written in place)")],
    out: Annotated[Path | None, typer.Option(help="write to this directory instead")] = None,
) -> None:
    """Export to ONNX, quantize to dynamic INT8, report parity and speed."""
    from pipelines.nlp_service.deploy import compress as run

    typer.echo(json.dumps(run(model_dir, out), indent=2))


@app.command()
@exits_on_error
def chat(
    model_dir: Annotated[Path, typer.Argument(help="model directory")],
    store: Annotated[Path | None, typer.Option(help="conversation store (SQLite)")] = None,
    conversation: Annotated[str | None, typer.Option(help="continue this conversation id")] = None,
) -> None:
    """An interactive conversation in the terminal (empty line or Ctrl-D ends it)."""
    from pipelines.nlp_service.predict import DialogueEngine

    engine = DialogueEngine(model_dir, store)
    cid = conversation or engine.start()
    typer.echo(f"conversation {cid} (empty line to stop)")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if not line.strip():
            break
        from core.errors import DataError

        try:
            r = engine.message(cid, line)
        except DataError as exc:
            typer.echo(f"  ! {exc}")
            continue
        slots = ", ".join(f"{k}={v}" for k, v in r["state"].items())
        typer.echo(f"bot> {r['reply']}")
        typer.echo(f"     [{r['intent']} {r['confidence']:.2f}; state: {slots or '-'}]")
        if r["escalate"]:
            typer.echo(f"     [escalated: {r['escalate_reason']}]")
    engine.close()


@app.command()
@exits_on_error
def serve(
    model_dir: Annotated[Path | None, typer.Argument(help="model directory to serve")] = None,
    store: Annotated[Path | None, typer.Option(help="conversation store (SQLite file)")] = None,
    registry: Annotated[
        str | None, typer.Option(help="serve this registered model's alias instead")
    ] = None,
    alias: Annotated[str, typer.Option(help="registry alias to follow")] = "production",
    name: Annotated[str | None, typer.Option(help="model name in URLs")] = None,
    host: Annotated[str, typer.Option(help="bind address (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8080,
    max_batch_size: Annotated[int, typer.Option(help="messages per encoder forward")] = 32,
) -> None:
    """Serve conversations: POST /v1/conversations, POST /v1/conversations/ID/messages,
    GET /v1/conversations/ID; the review page (chat + transcripts) at /ui/."""
    from core.serve import ServeConfig
    from core.serve.app import app_for
    from core.serve.server import serve as run_server
    from pipelines.nlp_service.serve import ROUTES, UI, DialoguePredictor

    cfg = ServeConfig(max_batch_size=max_batch_size, max_body_bytes=64 * 1024)
    application = app_for(
        lambda path, n, version: DialoguePredictor(path, n, version, store=store),
        cfg,
        model_dir,
        registry,
        name,
        alias=alias,
        watch_interval_s=10.0,
        routes=ROUTES,
        ui=UI,
    )
    typer.echo(f"review page: http://{host}:{port}/ui/")
    run_server(application, host, port)


if __name__ == "__main__":
    app()
