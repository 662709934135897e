"""Trainer behaviour on the real digits data: convergence, precision, accumulation, EMA, stopping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import ConfigError, DataError, NonFiniteError
from core.reference.digits import DigitsCNN, default_trainer_config, load_digits_splits
from core.train import Trainer, TrainerConfig, accuracy, seed_everything


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(8, seed=0)


def small_cfg(**kw) -> TrainerConfig:
    base = dict(max_epochs=1, batch_size=32, progress="off", optimizer={"name": "sgd", "lr": 0.05})
    base.update(kw)
    return TrainerConfig(**base)


def test_converges_on_digits_to_95_percent_test_accuracy(digits):
    seed_everything(0)
    cfg = default_trainer_config()
    cfg.progress = "off"
    trainer = Trainer(DigitsCNN(32), cfg, metrics={"accuracy": accuracy})
    result = trainer.fit(digits["train"], digits["val"])
    test = trainer.evaluate(digits["test"], prefix="test")
    assert test["test/accuracy"] >= 0.95
    assert result.global_step == trainer.total_steps == 8 * math.ceil(len(digits["train"]) / 32)
    assert len(result.history) == 8 and result.history[-1]["val/accuracy"] >= 0.95


def _mlp() -> nn.Module:
    seed_everything(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def test_accumulating_k_micro_batches_equals_one_large_batch(digits):
    sub = TensorDataset(*digits["train"][:256])
    a = Trainer(
        _mlp(),
        small_cfg(batch_size=16, grad_accum_steps=4, max_steps=4, schedule={"name": "constant"}),
    )
    a.fit(sub)
    b = Trainer(
        _mlp(),
        small_cfg(batch_size=64, grad_accum_steps=1, max_steps=4, schedule={"name": "constant"}),
    )
    b.fit(sub)
    assert a.global_step == b.global_step == 4
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    # and differs from taking 4 separate steps of 16 (so the check has teeth)
    c = Trainer(_mlp(), small_cfg(batch_size=16, max_steps=4, schedule={"name": "constant"}))
    c.fit(sub)
    assert not torch.allclose(next(a.model.parameters()), next(c.model.parameters()))


def test_partial_last_accumulation_group_is_scaled_by_its_own_size(digits):
    sub = TensorDataset(*digits["train"][:80])  # 5 micro-batches of 16: groups of 4 and 1
    a = Trainer(_mlp(), small_cfg(batch_size=16, grad_accum_steps=4, schedule={"name": "constant"}))
    a.fit(sub)
    assert a.global_step == 2


def test_fp16_step_with_injected_inf_is_skipped_and_scale_halves(digits):
    model = _mlp()
    trainer = Trainer(
        model, small_cfg(precision="fp16", max_steps=3, schedule={"name": "constant"})
    )
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 2 else grad

    model[1].weight.register_hook(poison)
    steps = []

    from core.train import Callback

    class Record(Callback):
        def on_step_end(self, t, step, logs):
            steps.append(
                (
                    logs["skipped"],
                    logs["loss_scale"],
                    [p.detach().clone() for p in t.model.parameters()],
                )
            )

    trainer.callbacks.append(Record())
    result = trainer.fit(TensorDataset(*digits["train"][:96]))
    assert result.nonfinite_steps == 1
    assert [s[0] for s in steps] == [0.0, 1.0, 0.0]
    # weights unchanged by the skipped step, scale halved after it
    for before, after in zip(steps[0][2], steps[1][2], strict=True):
        assert torch.equal(before, after)
    assert trainer.scaler.get_scale() == steps[1][1] / 2


def test_repeated_nonfinite_loss_raises_a_clear_error(digits):
    x, y = digits["train"][:64]
    x = x.clone()
    x[:] = float("nan")
    trainer = Trainer(_mlp(), small_cfg(max_nonfinite_steps=2))
    with pytest.raises(NonFiniteError, match="2 consecutive steps had non-finite") as exc:
        trainer.fit(TensorDataset(x, y))
    assert "check the data for NaN" in str(exc.value) and "epoch 0, step 2" in str(exc.value)


def test_bf16_autocast_trains_on_cpu(digits):
    trainer = Trainer(
        _mlp(), small_cfg(precision="bf16", max_epochs=2), metrics={"accuracy": accuracy}
    )
    trainer.fit(digits["train"])
    assert trainer.evaluate(digits["val"])["val/accuracy"] > 0.8


def test_bf16_is_fast_only_where_bf16_runs_natively():
    from core.train import bf16_is_fast

    assert bf16_is_fast("meta") is False
    if not torch.cuda.is_available():
        assert bf16_is_fast("cuda") is False
    # on a CPU without bf16 units autocast would emulate bf16, slower than fp32
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert bf16_is_fast("cpu") is bool(native)


def test_early_stopping_stops_when_monitored_metric_stalls(digits):
    cfg = small_cfg(
        max_epochs=50,
        optimizer={"name": "sgd", "lr": 1e-9},  # nothing can improve
        early_stopping={"monitor": "val/accuracy", "mode": "max", "patience": 2},
    )
    trainer = Trainer(_mlp(), cfg, metrics={"accuracy": accuracy})
    result = trainer.fit(TensorDataset(*digits["train"][:64]), digits["val"])
    assert result.stopped_early and result.epochs_completed == 3


def test_ema_weights_are_an_average_not_the_last_weights(digits):
    trainer = Trainer(
        _mlp(), small_cfg(ema_decay=0.9, max_epochs=2), metrics={"accuracy": accuracy}
    )
    trainer.fit(digits["train"])
    ema_w = trainer.eval_model[1].weight
    assert not torch.equal(ema_w, trainer.model[1].weight)
    assert trainer.evaluate(digits["val"])["val/accuracy"] > 0.8


def test_predict_returns_outputs_in_dataset_order(digits):
    trainer = Trainer(_mlp(), small_cfg(batch_size=7))
    preds = trainer.predict(digits["val"])
    x, _ = digits["val"][:]
    with torch.no_grad():
        torch.testing.assert_close(preds, trainer.model.eval()(x))


def test_schedule_warmup_then_cosine_reaches_floor():
    from core.train.config import ScheduleConfig
    from core.train.schedules import lr_factor

    f = lr_factor(ScheduleConfig(name="cosine", warmup_steps=4, min_lr_ratio=0.1), total_steps=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.55)  # halfway through the cosine
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    step = lr_factor(ScheduleConfig(name="step", step_size=3, gamma=0.5), 10)
    assert [step(s) for s in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    const = lr_factor(ScheduleConfig(name="constant", warmup_steps=2), 10)
    assert [const(s) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]


def test_empty_training_set_is_a_data_error():
    with pytest.raises(DataError, match="training set is empty"):
        Trainer(_mlp(), small_cfg()).fit(
            TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"grad_accum_steps": 0}, "grad_accum_steps must be >= 1"),
        ({"optimizer": {"name": "lion"}}, "unknown optimizer 'lion'"),
        ({"distributed": {"comm_hook": "topk", "topk_ratio": 0}}, "topk_ratio must lie in"),
        (
            {"distributed": {"comm_hook": "powersgd", "powersgd_warmup": 1}},
            "powersgd_warmup must be >= 2",
        ),
    ],
)
def test_config_errors_name_the_field_and_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message) as exc:
        TrainerConfig(**kwargs)
    assert " — " in str(exc.value)  # what — fix


def test_unknown_monitor_metric_is_a_config_error(digits):
    cfg = small_cfg(checkpoint={"monitor": "val/f1"})
    with pytest.raises(ConfigError, match="'val/f1' is not a logged metric"):
        Trainer(_mlp(), cfg, metrics={"accuracy": accuracy}).fit(
            TensorDataset(*digits["train"][:32]), digits["val"]
        )


def test_mlflow_tracking_records_params_and_metrics_in_local_store(digits, data_root):
    from mlflow.tracking import MlflowClient

    from core.paths import default_tracking_uri

    cfg = small_cfg(max_epochs=2, tracking="mlflow", experiment="test-exp", log_every_n_steps=5)
    trainer = Trainer(_mlp(), cfg, metrics={"accuracy": accuracy})
    trainer.fit(TensorDataset(*digits["train"][:320]), digits["val"])
    client = MlflowClient(default_tracking_uri())
    assert (
        default_tracking_uri().startswith("sqlite:///") and str(data_root) in default_tracking_uri()
    )
    run = client.get_run(trainer.extra_meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["batch_size"] == "32" and run.data.params["optimizer.name"] == "sgd"
    hist = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in hist] == [10, 20]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    assert "fit_result.json" in [a.path for a in client.list_artifacts(run.info.run_id)]


@pytest.mark.slow
def test_torch_compile_option_trains_like_eager(digits):
    sub = TensorDataset(*digits["train"][:128])
    eager = Trainer(_mlp(), small_cfg(max_epochs=2))
    eager.fit(sub)
    compiled = Trainer(_mlp(), small_cfg(max_epochs=2, compile=True))
    compiled.fit(sub)
    assert type(compiled._forward_model).__name__ == "OptimizedModule"
    for pe, pc in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-5)


def test_keeps_last_n_checkpoints_plus_the_best(digits, tmp_path):
    from core.train.checkpoint import list_checkpoints, read_meta

    # accuracy peaks at epoch 2 of 5 and then falls: the best must survive keep_last=1
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.55])
    cfg = small_cfg(
        max_epochs=5,
        checkpoint={"dir": str(tmp_path), "keep_last": 1, "monitor": "val/score", "mode": "max"},
    )
    trainer = Trainer(_mlp(), cfg, metrics={"score": lambda o, t: next(scores)})
    result = trainer.fit(TensorDataset(*digits["train"][:64]), digits["val"])
    kept = [p.name for p in list_checkpoints(tmp_path)]
    assert kept == ["step-00000004", "step-00000010"]
    assert result.best_checkpoint.endswith("step-00000004") and result.best_metric == 0.9
    assert read_meta(tmp_path / "step-00000010")["best_checkpoint"].endswith("step-00000004")


def test_batch_size_is_counted_for_tensor_list_and_dict_batches():
    from core.train.trainer import _batch_len

    assert _batch_len((torch.zeros(5, 3, 8, 8), torch.zeros(5))) == 5
    assert (
        _batch_len(([torch.zeros(3, 8, 8)] * 4, [{"boxes": torch.zeros(1, 4)}] * 4)) == 4
    )  # detection
    assert _batch_len({"input_ids": torch.zeros(6, 10), "mask": torch.zeros(6, 10)}) == 6
    assert _batch_len(torch.zeros(7, 2)) == 7


def test_parameter_groups_get_their_scaled_rate_and_the_schedule_moves_both():
    """``lr_scale`` groups (a pretrained backbone learning slower than its new head) keep
    their ratio through warm-up and decay; a group without it runs at the configured rate."""
    from core.train import build_optimizer
    from core.train.config import OptimizerConfig, ScheduleConfig
    from core.train.schedules import build_scheduler

    slow, fast = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = build_optimizer(
        [{"params": slow.parameters(), "lr_scale": 0.1}, {"params": fast.parameters()}],
        OptimizerConfig(name="adamw", lr=1e-3),
    )
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-3])
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_steps=5), 50)
    for _ in range(20):
        opt.step()
        sched.step()
        a, b = (g["lr"] for g in opt.param_groups)
        assert a == pytest.approx(0.1 * b) and 0 < b <= 1e-3
