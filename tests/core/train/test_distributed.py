"""DDP over gloo with 2 local processes, and the gradient-compression hooks."""

from __future__ import annotations

import pytest
import torch

from core.train import launch_local
from core.train.comm_hooks import topk_sparsify
from tests.core.train import ddp_workers

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_two_process_ddp_equals_single_process_on_the_combined_batch():
    ranks = launch_local(ddp_workers.train_mlp, 2, 16)
    single = ddp_workers.train_mlp(32)
    for k, v in single["weights"].items():
        torch.testing.assert_close(ranks[0]["weights"][k], v, rtol=1e-5, atol=1e-6)
        assert torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k])  # replicas agree
    # plain all-reduce hands the whole fp32 gradient to the collective every step
    n_params = sum(v.numel() for v in single["weights"].values())
    assert ranks[0]["bytes_per_step"] == n_params * 4


@pytest.fixture(scope="module")
def hooks():
    return launch_local(ddp_workers.hooks_suite, 2)[0]


def test_topk_at_100_percent_equals_all_reduce(hooks):
    for k, v in hooks["none"]["weights"].items():
        assert torch.equal(hooks["topk100"]["weights"][k], v), k


def test_topk_at_1_percent_is_within_2_points_of_all_reduce(hooks):
    assert hooks["none"]["accuracy"] >= 0.95
    assert hooks["topk"]["accuracy"] >= hooks["none"]["accuracy"] - 0.02
    # 1% of the values plus int32 indices: about 2% of the fp32 bytes
    ratio = hooks["topk"]["bytes_per_step"] / hooks["none"]["bytes_per_step"]
    assert 0.015 < ratio < 0.03


def test_powersgd_trains_and_sends_fewer_bytes(hooks):
    assert hooks["powersgd"]["accuracy"] >= 0.9
    assert hooks["powersgd"]["bytes_per_step"] < hooks["none"]["bytes_per_step"]


def test_fp16_hook_halves_the_bytes(hooks):
    assert hooks["fp16"]["bytes_per_step"] == hooks["none"]["bytes_per_step"] / 2
    assert hooks["fp16"]["accuracy"] >= hooks["none"]["accuracy"] - 0.02


@pytest.mark.parametrize("k", [1, 7, 100, 1000])
def test_topk_sent_plus_residual_is_the_accumulated_gradient_exactly(k):
    g = torch.Generator().manual_seed(k)
    acc = torch.randn(1000, generator=g)
    original = acc.clone()
    idx, values, residual = topk_sparsify(acc, k)
    assert idx.dtype == torch.int32 and idx.numel() == values.numel() == min(k, 1000)
    rebuilt = residual.clone()
    rebuilt[idx.long()] += values
    assert torch.equal(rebuilt, original)
    # the sent entries are the largest in magnitude
    kept = original.abs()[idx.long()].min()
    assert residual.abs().max() <= kept
    assert int((residual == 0).sum()) == min(k, 1000)


def test_fsdp2_matches_ddp():
    fsdp = launch_local(ddp_workers.train_mlp, 2, 16, "none", 6, "fsdp")
    ddp = launch_local(ddp_workers.train_mlp, 2, 16)
    for k, v in ddp[0]["weights"].items():
        torch.testing.assert_close(fsdp[0]["weights"][k], v, rtol=1e-5, atol=1e-6)


def test_resuming_with_a_different_world_size_is_a_clear_error(tmp_path):
    single = ddp_workers.train_mlp(32, ckpt_dir=str(tmp_path))
    assert single["weights"]
    messages = launch_local(ddp_workers.resume_expecting_error, 2, str(tmp_path))
    assert "written by 1 processes but this run has 2" in messages[0]
    assert "--nproc 1" in messages[0]


def test_topk_error_feedback_is_checkpointed_and_restored_exactly(tmp_path):
    full = launch_local(ddp_workers.topk_run, 2, None, 12, False)
    first = launch_local(ddp_workers.topk_run, 2, str(tmp_path), 6, False)
    assert first[0]["error_norm"] > 0  # there is residual state to lose
    second = launch_local(ddp_workers.topk_run, 2, str(tmp_path), 12, True)
    assert second[0]["resumed"].endswith("step-00000006")
    for k, v in full[0]["weights"].items():
        assert torch.equal(second[0]["weights"][k], v), k
    # each rank keeps its own residual; both were restored
    assert second[1]["error_norm"] == full[1]["error_norm"]
