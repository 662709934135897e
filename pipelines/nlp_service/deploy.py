"""Compression and export of an nlp_service model: ONNX fp32, dynamic INT8, parity report.

:func:`compress` exports the net (``model.ExportNet``: ids + mask in, intent probabilities,
tag ids and embeddings out; dynamic batch and sequence axes) to ``model.fp32.onnx`` through
:func:`core.compress.export.export_onnx`, quantizes it with
:class:`core.compress.quantize.Int8DynamicConfig` (ONNX Runtime dynamic INT8: weights ahead
of time, activations per batch) to ``model.onnx`` — the file the service runs — and writes
``parity.json``: on held-out messages, the cosine of INT8 against fp32 embeddings, intent
agreement, the largest probability difference, slot agreement, and the latency of both
sessions measured interleaved (``speedup``). INT8 is kept only when its cosine is at least
``min_cosine``; otherwise ``model.onnx`` is the fp32 graph, and the report says why.
Not here: training (``train.py``), the conversation engine (``predict.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_dir
from pipelines.nlp_service import model as M
from pipelines.nlp_service.data import independent_set
from pipelines.nlp_service.synth import messages


def _texts(n: int) -> list[str]:
    from pipelines.nlp_service.config import SynthConfig

    return [e.text for e in messages(SynthConfig(per_intent=max(2, n // 24), seed=4242))][:n]


def _time(session: Any, feeds: list[dict[str, np.ndarray]], rounds: int) -> float:
    t0 = time.perf_counter()
    for _ in range(rounds):
        for f in feeds:
            session.run(None, f)
    return time.perf_counter() - t0


def compress(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    min_cosine: float = 0.99,
    threads: int | None = None,
) -> dict[str, Any]:
    """Write ONNX fp32 + INT8 into ``out_dir`` (default: ``model_dir`` itself); returns the
    parity report (also ``parity.json``)."""
    from core.compress.export import export_onnx
    from core.compress.quantize import Int8DynamicConfig, quantize
    from core.compress.report import ort_session

    src = Path(model_dir)
    net, meta = M.load(src)
    tok = M.load_tokenizer(src)
    enc = M.encode_texts(tok, ["where is my order 12345", "hi"], meta["max_tokens"])
    example = (torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]))
    target = Path(out_dir) if out_dir else src
    with atomic_dir(target) as tmp:
        for f in src.iterdir():
            if f.is_file() and f.suffix != ".onnx" and f.name != "parity.json":
                shutil.copyfile(f, tmp / f.name)
        fp32 = tmp / "model.fp32.onnx"
        export_onnx(
            M.ExportNet(net),
            example,
            fp32,
            input_names=("input_ids", "attention_mask"),
            output_names=("intent_probs", "tag_ids", "sentence_embedding"),
            dynamic_seq=True,
        )
        quantize(fp32, Int8DynamicConfig(), out=tmp / "model.int8.onnx")
        s32, s8 = ort_session(fp32, threads), ort_session(tmp / "model.int8.onnx", threads)
        texts = [e.text for e in independent_set()] + _texts(96)
        ref, got = [], []
        feeds = []
        for i in range(0, len(texts), 16):
            e = M.encode_texts(tok, texts[i : i + 16], meta["max_tokens"])
            f = {"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]}
            feeds.append(f)
            ref.append(s32.run(None, f))
            got.append(s8.run(None, f))
        p32 = np.concatenate([r[0] for r in ref])
        p8 = np.concatenate([g[0] for g in got])
        e32 = np.concatenate([r[2] for r in ref])
        e8 = np.concatenate([g[2] for g in got])
        cos = (e32 * e8).sum(1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e8, axis=1))
        tag_agree = float(
            np.mean(
                [
                    np.mean((r[1] == g[1])[f["attention_mask"].astype(bool)])
                    for r, g, f in zip(ref, got, feeds, strict=True)
                ]
            )
        )
        # latency, interleaved (a slow spell of the machine hits both alike)
        single = feeds[:1] + [
            {k: v[:1] for k, v in f.items()} for f in feeds[1:8]
        ]  # batch 16 and batch 1 feeds
        _time(s32, single, 1), _time(s8, single, 1)
        t32 = t8 = 0.0
        for _ in range(5):
            t32 += _time(s32, single, 2)
            t8 += _time(s8, single, 2)
        report = {
            "messages": len(texts),
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
            "intent_agreement": float((p32.argmax(1) == p8.argmax(1)).mean()),
            "max_prob_diff": float(np.abs(p32 - p8).max()),
            "tag_agreement": tag_agree,
            "fp32_s": t32,
            "int8_s": t8,
            "speedup": t32 / t8 if t8 else None,
            "size_ratio": fp32.stat().st_size / (tmp / "model.int8.onnx").stat().st_size,
        }
        keep = report["cosine_mean"] >= min_cosine
        report["served"] = "int8" if keep else "fp32"
        if not keep:
            report["why"] = f"INT8 mean cosine {report['cosine_mean']:.4f} < {min_cosine}"
        shutil.copyfile(
            tmp / ("model.int8.onnx" if keep else "model.fp32.onnx"), tmp / "model.onnx"
        )
        (tmp / "parity.json").write_text(json.dumps(report, indent=2))
        meta["compression"] = report
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return report
