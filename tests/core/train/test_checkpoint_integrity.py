"""What outside tests found silently wrong in the engine, each with the input that broke it:
a non-finite fp16 loss applied as an update, checkpoint directories shared by two runs,
metadata edited or stripped of its checksums, and bad configs accepted until fit time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import CheckpointError, ConfigError
from core.train import Callback, Trainer, TrainerConfig, accuracy, seed_everything
from core.train import checkpoint as ckpt


def _data(n: int = 96) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def _mlp() -> nn.Module:
    seed_everything(1)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def _cfg(ckdir=None, **kw) -> TrainerConfig:
    base: dict = dict(
        max_epochs=1, batch_size=16, progress="off", optimizer={"name": "adamw", "lr": 1e-2}
    )
    if ckdir is not None:
        base["checkpoint"] = {"dir": str(ckdir), "every_n_steps": 2, "keep_last": 2} | kw.pop(
            "checkpoint", {}
        )
    base.update(kw)
    return TrainerConfig(**base)


# ---------------------------------------------------------------- fp16 non-finite loss
def test_fp16_nonfinite_loss_with_finite_gradients_changes_no_weight():
    class InfLossTrainer(Trainer):
        calls = 0

        def compute_loss(self, model, batch):
            loss, out, tgt = super().compute_loss(model, batch)
            InfLossTrainer.calls += 1
            if InfLossTrainer.calls == 2:  # a constant inf: the gradients stay finite
                loss = loss + torch.tensor(float("inf"))
            return loss, out, tgt

    snapshots = []

    class Record(Callback):
        def on_step_end(self, t, step, logs):
            snapshots.append((logs["skipped"], [p.detach().clone() for p in t.model.parameters()]))

    trainer = InfLossTrainer(
        _mlp(), _cfg(precision="fp16", max_steps=3, schedule={"name": "constant"})
    )
    trainer.callbacks.append(Record())
    scale0 = trainer.scaler.get_scale()
    result = trainer.fit(_data())
    assert [s[0] for s in snapshots] == [0.0, 1.0, 0.0] and result.nonfinite_steps == 1
    for before, after in zip(snapshots[0][1], snapshots[1][1], strict=True):
        assert torch.equal(before, after), "the skipped step changed the weights"
    assert not torch.equal(snapshots[1][1][0], snapshots[2][1][0])  # later steps do train
    assert trainer.scaler.get_scale() < scale0  # backed off as for an overflow


# ---------------------------------------------------------------- run ownership
def _fit(ckdir, **kw):
    trainer = Trainer(_mlp(), _cfg(ckdir, **kw))
    return trainer, trainer.fit(_data())


def test_checkpoints_carry_the_run_id_and_resume_continues_that_run(tmp_path):
    t1, _ = _fit(tmp_path, max_steps=4)
    ids = {ckpt.read_meta(p)["run_id"] for p in ckpt.list_checkpoints(tmp_path)}
    assert ids == {t1.run_id}
    t2, r2 = _fit(tmp_path, max_steps=6, checkpoint={"resume": "auto"})
    assert r2.resumed_from.endswith("step-00000004") and t2.run_id == t1.run_id
    assert {ckpt.read_meta(p)["run_id"] for p in ckpt.list_checkpoints(tmp_path)} == {t1.run_id}


def test_fresh_run_refuses_a_directory_with_another_runs_checkpoints(tmp_path):
    _fit(tmp_path, max_epochs=2)  # the old run reached step 12
    before = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    with pytest.raises(CheckpointError, match="checkpoint\\(s\\) of another run") as exc:
        _fit(tmp_path, max_steps=4)
    assert "overwrite=True" in str(exc.value)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == before  # nothing touched


def test_overwrite_replaces_the_old_run_and_keeps_the_new_runs_checkpoints(tmp_path):
    _fit(tmp_path, max_epochs=2)  # old run: steps 10 and 12 kept
    t, _ = _fit(tmp_path, max_steps=4, checkpoint={"overwrite": True})
    kept = ckpt.list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["step-00000002", "step-00000004"]
    assert {ckpt.read_meta(p)["run_id"] for p in kept} == {t.run_id}


def test_retention_never_deletes_own_checkpoints_for_corrupt_higher_ones(tmp_path):
    _fit(tmp_path, max_epochs=2)  # steps 10 and 12, both about to turn corrupt
    for p in ckpt.list_checkpoints(tmp_path):
        (p / "model.safetensors").write_bytes(b"garbage")
    t, _ = _fit(tmp_path, max_steps=4, checkpoint={"resume": "auto"})
    mine = [p.name for p in ckpt.list_checkpoints(tmp_path) if ckpt.run_id_of(p) == t.run_id]
    assert mine == ["step-00000002", "step-00000004"]  # retention kept them
    # and a crash now resumes the new run's progress, not nothing
    found = ckpt.find_resumable(tmp_path)
    assert found is not None and found.path.name == "step-00000004"
    assert found.meta["run_id"] == t.run_id


# ---------------------------------------------------------------- verification
def _one_checkpoint(tmp_path):
    _fit(tmp_path, max_steps=2)
    return ckpt.list_checkpoints(tmp_path)[-1]


def _rewrite_meta(path, change):
    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    (path / "meta.json").write_text(json.dumps(meta, indent=1))


def test_an_edited_metadata_field_is_refused(tmp_path):
    path = _one_checkpoint(tmp_path)
    text = (path / "meta.json").read_text()
    assert '"batch_in_epoch": 2' in text
    (path / "meta.json").write_text(text.replace('"batch_in_epoch": 2', '"batch_in_epoch": 3'))
    with pytest.raises(CheckpointError, match=r"meta\.json is corrupt"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize(
    "strip",
    [
        lambda m: m.pop("files"),
        lambda m: m.update(files={}),
        lambda m: m["files"].pop("model.safetensors"),
    ],
    ids=["no files list", "empty files list", "weights unlisted"],
)
def test_flipped_weights_are_refused_when_the_files_list_is_missing(tmp_path, strip):
    path = _one_checkpoint(tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # a byte in the data region: safetensors itself would load it
    weights.write_bytes(bytes(data))

    def change(meta):
        strip(meta)
        meta["meta_sha256"] = ckpt._meta_digest(meta)  # a consistent but stripped metadata

    _rewrite_meta(path, change)
    with pytest.raises(CheckpointError, match="cannot be verified"):
        ckpt.load_checkpoint(path)


def test_checkpoint_of_the_old_format_is_refused_with_the_reason(tmp_path):
    path = _one_checkpoint(tmp_path)
    _rewrite_meta(path, lambda m: (m.update(format=1), m.pop("meta_sha256")))
    with pytest.raises(CheckpointError, match="format 1 had no metadata checksum"):
        ckpt.load_checkpoint(path)


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"optimizer": {"nme": "adam"}}, "unknown config key optimizer.nme"),
        ({"optimizer": {"lr": "1e-3"}}, "optimizer.lr must be a number, got '1e-3'"),
        ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
        ({"batch_size": True}, "batch_size must be an integer, got True"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"eval_every_n_epochs": -1}, "eval_every_n_epochs must be >= 0"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas must be a list of 2 values"),
        ({"checkpoint": {"keep_last": "2"}}, "checkpoint.keep_last must be an integer"),
        ({"early_stopping": {"patience": 1.5}}, "early_stopping.patience must be an integer"),
        ({"distributed": {"backend": "mpi"}}, "unknown distributed.backend 'mpi'"),
        ({"progress": "fancy"}, "unknown progress 'fancy'"),
        ({"max_epochs": None}, "max_epochs must be an integer, got None"),
        ({"optimizer": 3}, "optimizer must be an object"),
    ],
)
def test_bad_config_values_fail_when_the_config_is_built(data, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainerConfig.from_dict(data)


def test_ints_are_accepted_where_floats_belong_and_lists_where_tuples_do():
    cfg = TrainerConfig.from_dict({"optimizer": {"lr": 1, "betas": [0.8, 0.9]}})
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.betas == (0.8, 0.9)


def test_mistyped_monitor_is_reported_when_the_trainer_is_built():
    cfg = _cfg(early_stopping={"monitor": "val/acuracy"})
    with pytest.raises(ConfigError, match="'val/acuracy' is not a logged metric") as exc:
        Trainer(_mlp(), cfg, metrics={"accuracy": accuracy})
    assert "val/accuracy" in str(exc.value)


def test_monitor_without_a_validation_set_is_a_config_error(tmp_path):
    cfg = _cfg(tmp_path, checkpoint={"monitor": "val/loss"})
    with pytest.raises(ConfigError, match="no validation set was given"):
        Trainer(_mlp(), cfg).fit(_data())


def test_dv_train_prints_a_bad_config_in_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps({"optimizer": {"lr": "1e-3"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "core.cli", "train", "digits", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: optimizer.lr must be a number")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- optimizer implementation
def test_optimizer_runs_fused_on_cpu_and_matches_the_per_tensor_loop():
    fused = Trainer(_mlp(), _cfg(max_steps=4))
    fused.fit(_data())
    assert fused.optimizer.defaults["fused"] is True
    loop = Trainer(
        _mlp(), _cfg(max_steps=4, optimizer={"name": "adamw", "lr": 1e-2, "impl": "for-loop"})
    )
    loop.fit(_data())
    assert not loop.optimizer.defaults.get("fused")
    for a, b in zip(fused.model.parameters(), loop.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_is_refused_where_the_parameters_cannot_take_it():
    from core.train.config import OptimizerConfig
    from core.train.optim import build_optimizer

    params = [nn.Parameter(torch.zeros(3, dtype=torch.float32, device="meta"))]
    with pytest.raises(ConfigError, match="impl='fused' needs"):
        build_optimizer(params, OptimizerConfig(impl="fused"))
    opt = build_optimizer(params, OptimizerConfig(impl="auto"))
    assert not opt.defaults.get("fused")  # PyTorch's own choice where fused cannot run
