"""Training the intent + slot model through :class:`core.train.Trainer`, two ways.

* **Full fine-tuning** (default): the whole encoder and both heads on the training messages,
  one joint loss (intent cross-entropy + slot-tag cross-entropy), heads at 20× the encoder's
  learning rate.
* **Few-shot** (``few_shot=K``), the SetFit recipe: K examples per intent; a contrastive
  fine-tune of the encoder on pairs of them (cosine similarity regressed to 1 for the same
  intent, 0 for different ones), then a logistic-regression head (scikit-learn) on the
  embeddings, copied into the net's intent head. The slot head is then fitted on the
  generated tagged messages with the encoder frozen.

Both hold out ``valid_fraction`` of the messages (stratified) to choose the out-of-scope
threshold: the confidence below which the best in-scope intent is rejected, the one that
maximizes validation accuracy (ties: the middle of the best range). The hand-written
independent set is never read here. Writes a model directory (``model.save``) with
``metrics.json`` and ``model_card.md``. Not here: metrics (``evaluate.py``), export
(``deploy.py``).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import DataError
from core.train import Callback, LossTrace, Trainer, TrainerConfig, build_optimizer, seed_everything
from pipelines.nlp_service import model as M
from pipelines.nlp_service.config import OOS, TrainConfig
from pipelines.nlp_service.data import Example, read_examples, seed_set, taxonomy
from pipelines.nlp_service.synth import dialogues, messages

SLOTS_ONLY = ""  # the intent of examples that train the slot head only

log = logging.getLogger(__name__)


def training_examples(cfg: TrainConfig) -> list[Example]:
    """The user's file, or generated messages plus the hand-written seed set."""
    if cfg.data:
        return read_examples(cfg.data, intents=None)
    return [*messages(cfg.synth), *seed_set()]


def slot_examples(cfg: TrainConfig) -> list[Example]:
    """Generated dialogue turns ("i ordered 5 of them", "actually make that three"): tagged
    for slots, trained for slots only (their intent is the dialogue's, not the turn's)."""
    if cfg.data:
        return []
    return [
        Example(t.text, SLOTS_ONLY, t.slots)
        for d in dialogues(cfg.synth)
        for t in d.turns[1:]
        if t.slots
    ]


def split(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Stratified: every intent keeps at least one training and one validation example."""
    by: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by[e.intent].append(e)
    r = random.Random(seed)
    tr, va = [], []
    for k in sorted(by):
        xs = by[k][:]
        r.shuffle(xs)
        n = min(max(1, round(len(xs) * fraction)), len(xs) - 1)
        va += xs[:n]
        tr += xs[n:]
    r.shuffle(tr)
    return tr, va


def tensors(
    tok: Any, examples: list[Example], intents: list[str], max_tokens: int
) -> TensorDataset:
    enc = M.encode_texts(tok, [e.text for e in examples], max_tokens)
    x = torch.from_numpy(np.stack([enc["input_ids"], enc["attention_mask"]], 1))
    tags = M.tag_targets(enc["offsets"], enc["special"], [e.slots for e in examples])
    index = {k: i for i, k in enumerate(intents)}
    # an intent outside the taxonomy (dialogue turns, tagged for slots only) trains no intent
    y = np.concatenate([np.array([[index.get(e.intent, M.IGNORE)] for e in examples]), tags], 1)
    return TensorDataset(x, torch.from_numpy(y))


def trim_collate(batch: list[Any]) -> list[torch.Tensor]:
    """Stack a batch and cut the padding every row of it has (tensors are padded to the
    longest message of the whole set; most batches need far fewer tokens)."""
    from torch.utils.data import default_collate

    x, y = default_collate(batch)
    n = max(int(x[:, 1].sum(1).max()), 2)
    return [x[:, :, :n], y[:, : n + 1]]


def joint_loss(out: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    intent, tags = out
    return _ce(intent, y[:, 0]) + _ce(tags.flatten(0, 1), y[:, 1:].flatten())


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not ``IGNORE`` (0 when there are none)."""
    per = nn.functional.cross_entropy(logits, target, ignore_index=M.IGNORE, reduction="sum")
    return per / (target != M.IGNORE).sum().clamp_min(1)


def _trainer_cfg(cfg: TrainConfig, epochs: int, batch_size: int | None = None) -> TrainerConfig:
    return TrainerConfig(
        max_epochs=epochs,
        max_steps=cfg.max_steps,
        batch_size=batch_size or cfg.batch_size,
        eval_every_n_epochs=0,
        grad_clip_norm=1.0,
        seed=cfg.seed,
        log_every_n_steps=20,
        optimizer={"name": "adamw", "lr": cfg.lr, "weight_decay": 0.01},
        schedule={"name": "cosine", "warmup_steps": 10},
    )


def _groups(net: M.DialogueNet, lr: float, head_scale: float = 20.0) -> Any:
    """Optimizer factory: the encoder at ``lr``, the (new) heads at ``head_scale * lr``."""
    opt_cfg = TrainerConfig(optimizer={"name": "adamw", "lr": lr, "weight_decay": 0.01}).optimizer

    def factory(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        enc = {id(p) for p in net.encoder.parameters()}
        return build_optimizer(
            [
                {"params": [p for p in params if id(p) in enc], "lr_scale": 1.0},
                {"params": [p for p in params if id(p) not in enc], "lr_scale": head_scale},
            ],
            opt_cfg,
        )

    return factory


def fit_full(
    net: M.DialogueNet, data: TensorDataset, cfg: TrainConfig, callbacks: list[Callback]
) -> list[float]:
    trace = LossTrace()
    Trainer(
        net,
        _trainer_cfg(cfg, cfg.epochs),
        loss_fn=joint_loss,
        callbacks=[trace, *callbacks],
        optimizer_factory=_groups(net, cfg.lr),
        collate_fn=trim_collate,
    ).fit(data)
    return trace.losses


class PairNet(nn.Module):
    """``(B, 4, L)`` ids/mask of two texts -> their cosine similarity (SetFit's body loss)."""

    def __init__(self, net: M.DialogueNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.net.embed(x[:, 0], x[:, 1])
        b = self.net.embed(x[:, 2], x[:, 3])
        return (a * b).sum(-1)


def pairs(examples: list[Example], per_example: int, seed: int) -> list[tuple[int, int, float]]:
    """Balanced positive/negative index pairs (SetFit's sampling: half same intent)."""
    r = random.Random(seed)
    by: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by[e.intent].append(i)
    out = []
    for i, e in enumerate(examples):
        others = [j for j in by[e.intent] if j != i]
        for k in range(per_example):
            if k % 2 == 0 and others:
                out.append((i, r.choice(others), 1.0))
            else:
                j = r.randrange(len(examples))
                while examples[j].intent == e.intent:
                    j = r.randrange(len(examples))
                out.append((i, j, 0.0))
    return out


def fit_few_shot(
    net: M.DialogueNet,
    tok: Any,
    shots: list[Example],
    tagged: list[Example],
    intents: list[str],
    cfg: TrainConfig,
    callbacks: list[Callback],
) -> list[float]:
    from sklearn.linear_model import LogisticRegression

    enc = M.encode_texts(tok, [e.text for e in shots], cfg.encoder.max_tokens)
    ids, mask = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
    pp = pairs(shots, cfg.pairs_per_example, cfg.seed)
    a = torch.tensor([p[0] for p in pp])
    b = torch.tensor([p[1] for p in pp])
    x = torch.stack([ids[a], mask[a], ids[b], mask[b]], 1)
    t = torch.tensor([p[2] for p in pp])
    trace = LossTrace()
    Trainer(
        PairNet(net),
        _trainer_cfg(cfg, cfg.contrastive_epochs, 16),
        loss_fn=nn.functional.mse_loss,
        callbacks=[trace, *callbacks],
    ).fit(TensorDataset(x, t))
    net.eval()
    with torch.inference_mode():
        emb = net.embed(ids, mask).numpy()
    y = np.array([intents.index(e.intent) for e in shots])
    head = LogisticRegression(C=1.0, max_iter=3000).fit(emb * M.EMBED_SCALE, y)
    with torch.no_grad():
        w = torch.zeros_like(net.intent_head.weight)
        bias = torch.full_like(net.intent_head.bias, -1e4)  # intents without shots: never
        w[head.classes_] = torch.from_numpy(head.coef_).float()
        bias[head.classes_] = torch.from_numpy(head.intercept_).float()
        net.intent_head.weight.copy_(w)
        net.intent_head.bias.copy_(bias)
    # the slot head on the frozen encoder
    for p in net.parameters():
        p.requires_grad_(False)
    for p in net.slot_head.parameters():
        p.requires_grad_(True)
    data = tensors(tok, tagged, intents, cfg.encoder.max_tokens)
    slot_cfg = _trainer_cfg(cfg, 1)
    slot_cfg.optimizer.lr = 3e-3

    def slot_loss(out: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return _ce(out[1].flatten(0, 1), y[:, 1:].flatten())

    Trainer(
        net, slot_cfg, loss_fn=slot_loss, callbacks=[trace, *callbacks], collate_fn=trim_collate
    ).fit(data)
    for p in net.parameters():
        p.requires_grad_(True)
    return trace.losses


def choose_threshold(probs: np.ndarray, y: np.ndarray, intents: list[str]) -> tuple[float, float]:
    """The out-of-scope threshold with the best accuracy on ``(probs, y)``; (threshold, acc)."""
    if OOS not in intents:
        return 0.0, float((probs.argmax(1) == y).mean())
    grid = np.round(np.arange(0.0, 0.96, 0.01), 2)
    accs = np.array([(M.apply_threshold(probs, intents, float(t))[0] == y).mean() for t in grid])
    best = np.flatnonzero(accs >= accs.max() - 1e-12)
    return float(grid[best[len(best) // 2]]), float(accs.max())


def train(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> Path:
    """Train and write the model directory ``cfg.out_dir``; returns its path."""
    from core.atomic import atomic_dir

    seed_everything(cfg.seed)
    examples = training_examples(cfg)
    intents = list(taxonomy(examples))
    tr, va = split(examples, cfg.valid_fraction, cfg.seed)
    enc_dir = Path(cfg.encoder.path) if cfg.encoder.path else M.packaged_encoder()
    tok = M.load_tokenizer(enc_dir)
    net = M.build(len(intents), enc_dir)
    cbs = list(callbacks or [])
    if cfg.few_shot:
        r = random.Random(cfg.seed)
        by: dict[str, list[Example]] = defaultdict(list)
        for e in tr:
            by[e.intent].append(e)
        shots = [x for k in intents for x in r.sample(by[k], min(cfg.few_shot, len(by[k])))]
        if len({e.intent for e in shots}) < 2:
            raise DataError("few-shot training needs at least two intents", where=str(cfg.data))
        tagged = [e for e in tr if e.slots] + slot_examples(cfg) or tr
        losses = fit_few_shot(net, tok, shots, tagged, intents, cfg, cbs)
        n_train = len(shots)
    else:
        data = tensors(tok, tr + slot_examples(cfg), intents, cfg.encoder.max_tokens)
        losses = fit_full(net, data, cfg, cbs)
        n_train = len(tr)
    net.eval()
    meta: dict[str, Any] = {
        "kind": "nlp_service",
        "intents": intents,
        "max_tokens": cfg.encoder.max_tokens,
        "oos_threshold": 0.0,
        "mode": f"few_shot_{cfg.few_shot}" if cfg.few_shot else "full",
        "train_config": asdict(cfg),
    }
    an = M.Analyzer.from_net(net, tok, meta)
    probs = an.probs([e.text for e in va])
    y = np.array([intents.index(e.intent) for e in va])
    thr, acc = choose_threshold(probs, y, intents)
    meta["oos_threshold"] = thr
    metrics = {
        "valid_accuracy": acc,
        "valid_accuracy_no_threshold": float((probs.argmax(1) == y).mean()),
        "oos_threshold": thr,
        "train_examples": n_train,
        "valid_examples": len(va),
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
    }
    meta["metrics"] = metrics
    import json

    with atomic_dir(cfg.out_dir) as tmp:
        M.save(net, tmp, meta, enc_dir)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (tmp / "model_card.md").write_text(_card(meta, metrics))
    log.info("nlp_service model written to %s (valid accuracy %.3f)", cfg.out_dir, acc)
    return Path(cfg.out_dir)


def _card(meta: dict[str, Any], m: dict[str, Any]) -> str:
    return (
        "# nlp_service intent + slot model\n\n"
        f"- encoder: all-MiniLM-L6-v2 (fine-tuned, mode `{meta['mode']}`)\n"
        f"- intents: {len(meta['intents'])} ({', '.join(meta['intents'])})\n"
        f"- out-of-scope threshold: {m['oos_threshold']:.2f} (chosen on validation)\n"
        f"- validation accuracy: {m['valid_accuracy']:.3f}\n"
        "- validation data comes from the same source as training; `nlp-service evaluate`\n"
        "  reports accuracy on hand-written messages, the flow also slot F1 and joint goal\n"
        "  accuracy.\n"
    )
