"""nlp_service benchmark (results in benchmarks/results/nlp_service.json).

One run on this machine, the default recipe (``TrainConfig()``: 120 generated messages per
intent + the seed set, 3 epochs of full fine-tuning of all-MiniLM-L6-v2):

- ``intent.accuracy_independent``: the 146 hand-written messages (``resources/independent.jsonl``,
  never trained on); ``intent.accuracy_synthetic``: the pipeline's generator at another seed;
  ``intent.accuracy_heldout_generator``: ``benchmarks/heldout_dialogue.py`` (other phrasings,
  noise and value formats); ``intent.oos_recall`` / ``oos_precision`` on the hand-written set;
  ``intent.fewshot10_accuracy_independent``: the SetFit-style recipe with 10 examples per intent.
- ``state``: slot F1 and joint goal accuracy on dialogues of the pipeline's generator (another
  seed) and of the held-out generator; ``state.joint_goal_accuracy`` is the held-out one
  (seed 2027, whose errors were read while building the tagger's decoding), and
  ``joint_goal_accuracy_other_seeds`` the same generator at seeds no one looked at.
- ``serve``: the INT8 model behind ``core.serve`` on loopback, 16 concurrent conversations
  sending short messages for ``--seconds``: p50/p99 latency; ``serve.int8_speedup`` and
  cosine from ``deploy.compress`` (ONNX Runtime fp32 vs dynamic INT8, interleaved; the
  median speed-up of three compress runs).
- ``long``: ``long_context.evaluate_long`` on the trained model: the 16K encoder and the same
  encoder truncated to the last 512 tokens, each continued-trained the same way on ~2K-token
  conversations, judged on 24 held-apart ~15K-token conversations (which plan is "it"?), and
  the intent accuracy the trained encoder keeps on the hand-written messages
  (``short_drop``); ``long.swa_vs_dense_speedup_16k``: the encoder's forward at 16,384 tokens
  (window 256, a turn marker every 64 tokens) on the sliding-window path against the same
  model with dense attention under the same mask. ``--only long`` / ``--only serve`` /
  ``--only state`` / ``--only int8`` measure one section into an existing result.

Run: ``.venv/bin/python benchmarks/nlp_service.py`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import heldout_dialogue as H
from benchmarks._common import print_table, write_result

OTHER_SEEDS = (7, 31337, 99)


def _intents(model_dir: Path) -> dict[str, Any]:
    from pipelines.nlp_service.config import SynthConfig
    from pipelines.nlp_service.data import independent_set
    from pipelines.nlp_service.evaluate import intent_report, joint_goal_accuracy, slot_scores
    from pipelines.nlp_service.model import Analyzer
    from pipelines.nlp_service.synth import dialogues, messages

    an = Analyzer(model_dir)  # the served file: model.onnx (INT8 when kept)
    ind = intent_report(an, independent_set())
    own = messages(SynthConfig(per_intent=20, seed=1234))
    syn = intent_report(an, own)
    held = H.messages(20)
    hel = intent_report(an, held)
    return {
        "intent": {
            "accuracy_independent": ind["accuracy"],
            "macro_f1_independent": ind["macro_f1"],
            "oos_recall": ind["oos_recall"],
            "oos_precision": ind["oos_precision"],
            "accuracy_synthetic": syn["accuracy"],
            "accuracy_heldout_generator": hel["accuracy"],
            "independent_top_confusions": ind["top_confusions"][:6],
            "heldout_top_confusions": hel["top_confusions"][:6],
        },
        "state": {
            "slot_f1_synthetic": slot_scores(an, [e for e in own if e.slots])["f1"],
            "slot_f1_heldout": slot_scores(an, [e for e in held if e.slots])["f1"],
            "joint_goal_accuracy_synthetic": joint_goal_accuracy(
                an, dialogues(SynthConfig(dialogues=150, seed=1234))
            )["joint_goal_accuracy"],
            "joint_goal_accuracy": joint_goal_accuracy(an, H.dialogues(150))["joint_goal_accuracy"],
            # the held-out generator at seeds nobody looked at while building the tracker
            "joint_goal_accuracy_other_seeds": {
                str(seed): joint_goal_accuracy(an, H.dialogues(150, seed=seed))[
                    "joint_goal_accuracy"
                ]
                for seed in OTHER_SEEDS
            },
        },
    }


async def _load(url: str, clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    texts = [e.text for e in H.messages(4, seed=99) if len(e.text) < 120]
    lat: list[float] = []
    errors = 0

    async def client(i: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            cid = (await c.post("/v1/conversations", json={})).json()["conversation_id"]
            k = i
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                r = await c.post(
                    f"/v1/conversations/{cid}/messages", json={"text": texts[k % len(texts)]}
                )
                lat.append(time.perf_counter() - t0)
                errors += r.status_code >= 500
                k += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    a = np.array(lat) * 1000
    return {
        "clients": clients,
        "requests": len(lat),
        "throughput_rps": len(lat) / seconds,
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "errors_5xx": errors,
    }


def _int8(model_dir: Path, runs: int = 3) -> dict[str, Any]:
    """``deploy.compress`` into ``model_dir`` (what is served) and ``runs - 1`` more times
    into scratch folders: the speed-up is the median of the runs (one run times 80 forwards
    per side, and its figure moves by 10% between runs), parity from the served one."""
    from pipelines.nlp_service.deploy import compress

    parity = compress(model_dir)
    speeds = [parity["speedup"]]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs - 1):
            speeds.append(compress(model_dir, out_dir=Path(tmp) / f"c{i}")["speedup"])
    return {
        "int8_speedup": float(np.median(speeds)),
        "int8_speedup_runs": speeds,
        "int8_cosine_mean": parity["cosine_mean"],
        "int8_cosine_min": parity["cosine_min"],
        "int8_intent_agreement": parity["intent_agreement"],
        "served": parity["served"],
    }


def _serve(model_dir: Path, seconds: float) -> dict[str, Any]:
    from core.serve import ServeConfig, create_app
    from core.serve.server import BackgroundServer, wait_until_ready
    from pipelines.nlp_service.serve import ROUTES, DialoguePredictor

    with tempfile.TemporaryDirectory() as tmp:
        pred = DialoguePredictor(model_dir, "nlp", store=Path(tmp) / "c.sqlite")
        cfg = ServeConfig(max_batch_size=16, max_queue_delay_ms=3)
        with BackgroundServer(create_app(pred, cfg, routes=ROUTES)) as srv:
            wait_until_ready(srv.url, timeout=300)
            asyncio.run(_load(srv.url, 4, 3))  # warm-up
            return asyncio.run(_load(srv.url, 16, seconds))


def _long_speed(n: int = 16384, window: int = 256) -> dict[str, Any]:
    """Encoder forward at ``n`` tokens: our sliding-window path against the same model with
    dense attention and the same visibility as a band mask (SDPA), one conversation with a
    turn marker every 64 tokens (global), after a warm-up; median of ``runs``."""
    import torch

    from pipelines.nlp_service import model as M
    from pipelines.nlp_service.long_context import extend, global_positions

    tok = M.load_tokenizer()
    net = M.build(4).eval()
    ids = torch.randint(2000, 20000, (1, n))
    ids[0, 0] = tok.cls_token_id
    ids[0, 63::64] = tok.sep_token_id
    mask = torch.ones_like(ids)
    g = global_positions(ids[0], tok.cls_token_id, tok.sep_token_id)
    out: dict[str, Any] = {"tokens": n, "window": window, "global_tokens": len(g)}
    with torch.inference_mode():
        for name in ("swa", "dense"):
            enc = extend(net, n, window, attention=name)
            enc(ids[:, :2048], mask[:, :2048], g[g < 2048])  # warm-up
            times = []
            for _ in range(2 if name == "dense" else 3):
                t0 = time.perf_counter()
                enc(ids, mask, g)
                times.append(time.perf_counter() - t0)
            out[f"{name}_s"] = float(np.median(times))
    out["swa_vs_dense_speedup"] = out["dense_s"] / out["swa_s"]
    return out


def _serve_fields(serve: dict[str, Any]) -> dict[str, Any]:
    return {
        "p99_ms_16_clients": serve["p99_ms"],
        "p50_ms_16_clients": serve["p50_ms"],
        "throughput_rps_16_clients": serve["throughput_rps"],
        "errors_5xx": serve["errors_5xx"],
    }


def _long(model_dir: Path | None) -> dict[str, Any]:
    """Speed at 16K, and (with a trained model) the long-conversation accuracy figures."""
    out: dict[str, Any] = {}
    if model_dir is not None:
        from pipelines.nlp_service import model as M
        from pipelines.nlp_service.config import LongConfig
        from pipelines.nlp_service.data import independent_set
        from pipelines.nlp_service.long_context import evaluate_long

        net, meta = M.load(model_dir)
        ind = independent_set()
        t0 = time.perf_counter()
        out = evaluate_long(
            net, M.load_tokenizer(model_dir), LongConfig(), [e.text for e in ind],
            [e.intent for e in ind], meta["intents"],
        )  # fmt: skip
        out["seconds"] = time.perf_counter() - t0
    speed = _long_speed()
    out.update({"swa_vs_dense_speedup_16k": speed["swa_vs_dense_speedup"], "speed_16k": speed})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", default=None, help="keep the trained models here")
    ap.add_argument(
        "--only",
        choices=("all", "long", "serve", "state", "int8"),
        default="all",
        help="one section into an existing result (serve, state, int8: the model under --out/full)",
    )
    args = ap.parse_args()
    if args.only != "all":
        from benchmarks._common import RESULTS

        prev = json.loads((RESULTS / "nlp_service.json").read_text())
        prev.pop("benchmark", None)
        prev.pop("machine", None)
        if args.only == "long":
            prev["long"] = _long(Path(args.out) / "full" if args.out else None)
            print(json.dumps(prev["long"], indent=2))
        elif args.only == "int8":
            prev["serve"].update(_int8(Path(args.out) / "full"))
            prev["serve"]["int8_run"] = f"--only int8 on {time.strftime('%Y-%m-%d')}"
            print(json.dumps(prev["serve"], indent=2))
        elif args.only == "state":
            res = _intents(Path(args.out) / "full")
            prev["state"] = res["state"]
            prev["state"]["run"] = (
                f"--only state on {time.strftime('%Y-%m-%d')}: a model trained with the "
                "TrainConfig() defaults, not the run the intent section comes from"
            )
            print(json.dumps(prev["state"], indent=2))
        else:
            serve = _serve(Path(args.out) / "full", args.seconds)
            prev["serve"].update(_serve_fields(serve))
            print(json.dumps(serve, indent=2))
        print(f"wrote {write_result('nlp_service', prev)}")
        return
    from pipelines.nlp_service.config import TrainConfig
    from pipelines.nlp_service.train import train

    root = Path(args.out or tempfile.mkdtemp(prefix="dv-nlp-bench-"))
    t0 = time.perf_counter()
    full = train(TrainConfig(out_dir=str(root / "full")))
    train_s = time.perf_counter() - t0
    int8 = _int8(full)
    res = _intents(full)
    t1 = time.perf_counter()
    few = train(TrainConfig(out_dir=str(root / "few10"), few_shot=10))
    few_s = time.perf_counter() - t1
    from pipelines.nlp_service.data import independent_set
    from pipelines.nlp_service.evaluate import intent_report
    from pipelines.nlp_service.model import Analyzer

    res["intent"]["fewshot10_accuracy_independent"] = intent_report(
        Analyzer(few, prefer="torch"), independent_set()
    )["accuracy"]
    serve = _serve(full, args.seconds)
    result = {
        "recipe": "TrainConfig() defaults: 120 generated/intent + seed set, 3 epochs, MiniLM-L6",
        "train_s": train_s,
        "fewshot10_train_s": few_s,
        **res,
        "serve": {
            **_serve_fields(serve),
            **int8,
        },
    }
    result["long"] = _long(full)
    path = write_result("nlp_service", result)
    i, s, v = result["intent"], result["state"], result["serve"]
    print_table(
        "nlp_service",
        ["metric", "value", "target"],
        [
            ["intent.accuracy_independent", i["accuracy_independent"], ">= 0.90"],
            ["intent.accuracy_synthetic", i["accuracy_synthetic"], ">= 0.97"],
            ["intent.accuracy_heldout_generator", i["accuracy_heldout_generator"], "(report)"],
            [
                "intent.fewshot10_accuracy_independent",
                i["fewshot10_accuracy_independent"],
                ">= 0.85",
            ],
            ["intent.oos_recall", i["oos_recall"], ">= 0.80"],
            ["state.joint_goal_accuracy (held-out gen.)", s["joint_goal_accuracy"], ">= 0.85"],
            ["state.joint_goal_accuracy_synthetic", s["joint_goal_accuracy_synthetic"], "(report)"],
            ["long.accuracy_16k", result["long"]["accuracy_16k"], "(report)"],
            ["long.accuracy_trunc512", result["long"]["accuracy_trunc512"], "(report)"],
            ["long gain (16k - trunc512)", result["long"]["gain"], ">= 0.10"],
            ["long.short_drop", result["long"]["short_drop"], "<= 0.01"],
            ["long.swa_vs_dense_speedup_16k", result["long"]["swa_vs_dense_speedup_16k"], ">= 10"],
            ["serve.p99_ms_16_clients", v["p99_ms_16_clients"], "<= 50"],
            ["serve.int8_speedup", v["int8_speedup"], ">= 1.5"],
            ["serve.int8_cosine_mean", v["int8_cosine_mean"], ">= 0.99"],
        ],
    )
    print(f"wrote {path}")
    print(json.dumps(result["intent"]["heldout_top_confusions"]))


if __name__ == "__main__":
    main()
