"""The MLflow model registry in a local SQLite store: versions, lineage, promotion both ways."""

from __future__ import annotations

import json
import shutil

import pytest

from core.registry import PRODUCTION, ModelRegistry, RegistryError, RegistryWatcher


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    mp = pytest.MonkeyPatch()
    mp.setenv("DV_DATA_ROOT", str(root))
    yield ModelRegistry()
    mp.undo()


def model_dir(path, score: float):
    """A model directory whose 'quality' is a number the evaluation reads back."""
    from torch import nn

    from core.artifacts import save_model_dir

    config = {"arch": "digits_cnn", "score": score}
    return save_model_dir(path, nn.Linear(2, 2), config, {"val/accuracy": score}, "# card\n")


def held_out(path) -> float:
    return json.loads((path / "config.json").read_text())["score"]


def test_register_records_artifacts_lineage_and_candidate_alias(registry, tmp_path):
    mv = registry.register(
        "m-lineage",
        model_dir(tmp_path / "a", 0.9),
        lineage={"dataset_hash": "abc123", "config": {"lr": 0.1}},
    )
    assert mv.version == "1" and mv.aliases == ["candidate"]
    assert mv.tags["dataset_hash"] == "abc123" and json.loads(mv.tags["config"]) == {"lr": 0.1}
    assert len(mv.tags["git_commit"]) >= 7 and mv.tags["status"] == "complete"
    assert mv.metrics == {"val_accuracy": 0.9}
    assert sorted(p.name for p in mv.path.iterdir()) == [
        "checksums.json",
        "config.json",
        "metrics.json",
        "model.safetensors",
        "model_card.md",
    ]


def test_promotion_gate_both_ways(registry, tmp_path):
    v1 = registry.register("m-gate", model_dir(tmp_path / "v1", 0.90))
    first = registry.promote_if_better("m-gate", v1.version, held_out, margin=0.01)
    assert first.promoted and first.reason == "no production version yet"
    v2 = registry.register("m-gate", model_dir(tmp_path / "v2", 0.905))
    worse = registry.promote_if_better("m-gate", v2.version, held_out, margin=0.01)
    assert not worse.promoted and "does not beat production v1 by more than 0.01" in worse.reason
    assert registry.get("m-gate", alias=PRODUCTION).version == "1"
    assert registry.get("m-gate", version="2").tags["promotion_reason"] == worse.reason
    assert registry.get("m-gate", alias="candidate").version == "2"
    v3 = registry.register("m-gate", model_dir(tmp_path / "v3", 0.95))
    better = registry.promote_if_better("m-gate", v3.version, held_out, margin=0.01)
    assert (
        better.promoted
        and better.previous == "1"
        and registry.get("m-gate", alias=PRODUCTION).version == "3"
    )


def test_partial_version_never_touches_production(registry, tmp_path):
    v1 = registry.register("m-partial", model_dir(tmp_path / "v1", 0.5))
    registry.promote_if_better("m-partial", v1.version, held_out)
    v2 = registry.register("m-partial", model_dir(tmp_path / "v2", 0.99))
    registry.client.set_model_version_tag("m-partial", v2.version, "status", "partial")
    res = registry.promote_if_better("m-partial", v2.version, held_out)
    assert not res.promoted and "incomplete" in res.reason
    assert registry.get("m-partial", alias=PRODUCTION).version == "1"
    v3 = registry.register("m-partial", model_dir(tmp_path / "v3", 0.99))
    shutil.rmtree(v3.path)  # artifacts lost after registration
    assert not registry.promote_if_better("m-partial", v3.version, held_out).promoted
    assert registry.get("m-partial", alias=PRODUCTION).version == "1"


def test_bad_inputs_are_clear_errors(registry, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match=r"lacks config\.json"):
        registry.register("m-bad", tmp_path / "empty")
    with pytest.raises(RegistryError, match="has no alias production"):
        registry.get("m-nothing", alias=PRODUCTION)


def test_watcher_reports_a_moved_alias_once(registry, tmp_path):
    v1 = registry.register("m-watch", model_dir(tmp_path / "v1", 0.5))
    registry.promote_if_better("m-watch", v1.version, held_out)
    w = RegistryWatcher(registry, "m-watch", predictor=lambda path, name, version: (name, version))
    assert w.current()() == ("m-watch", "1") and w.check() is None
    v2 = registry.register("m-watch", model_dir(tmp_path / "v2", 0.9))
    registry.promote_if_better("m-watch", v2.version, held_out)
    assert w.check()() == ("m-watch", "2")
    assert w.check()() == ("m-watch", "2")  # not confirmed (its load failed): offered again
    w.confirm()
    assert w.check() is None and w.served == "2"


def _flip(f, where: int = -3) -> None:
    data = bytearray(f.read_bytes())
    data[where] ^= 0xFF
    f.write_bytes(bytes(data))


def test_a_corrupt_model_file_is_never_registered(registry, tmp_path):
    d = model_dir(tmp_path / "c", 0.9)
    _flip(d / "model.safetensors")
    with pytest.raises(RegistryError, match=r"corrupt: model\.safetensors is corrupt"):
        registry.register("m-corrupt", d)
    # a directory from before checksums: the weights must load
    legacy = tmp_path / "legacy"
    shutil.copytree(d, legacy)
    (legacy / "checksums.json").unlink()
    (legacy / "model.safetensors").write_bytes(b"\x08\x01garbage")
    with pytest.raises(RegistryError, match="weights cannot be loaded"):
        registry.register("m-corrupt", legacy)
    assert registry.find("m-corrupt", "candidate") is None


def test_a_failing_candidate_evaluation_is_recorded_not_raised(registry, tmp_path):
    v1 = registry.register("m-evalfail", model_dir(tmp_path / "v1", 0.5))

    def ort_fails(path):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH")

    res = registry.promote_if_better("m-evalfail", v1.version, ort_fails)
    assert not res.promoted and "RuntimeError: [ONNXRuntimeError]" in res.reason
    assert registry.get("m-evalfail", version="1").tags["promotion_reason"] == res.reason


def test_a_broken_production_never_blocks_a_good_candidate(registry, tmp_path):
    v1 = registry.register("m-broken", model_dir(tmp_path / "v1", 0.9))
    assert registry.promote_if_better("m-broken", v1.version, held_out).promoted
    (v1.path / "config.json").write_text("{not json")  # production rots in the store
    v2 = registry.register("m-broken", model_dir(tmp_path / "v2", 0.8))
    res = registry.promote_if_better("m-broken", v2.version, held_out)
    assert res.promoted and "production v1 could not be evaluated" in res.reason
    assert registry.get("m-broken", alias=PRODUCTION).version == "2"


def _register_at(args) -> str:
    root, name, src, start = args
    import os
    import time

    os.environ["DV_DATA_ROOT"] = root
    from core.registry import ModelRegistry

    reg = ModelRegistry()
    time.sleep(max(0.0, start - time.time()))  # both processes write at the same moment
    return reg.register(name, src).version


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_registering_a_new_name_at_once_lose_nothing(tmp_path):
    import multiprocessing as mp
    import time

    root = tmp_path / "store"
    srcs = [model_dir(tmp_path / f"src{i}", 0.5 + i / 10) for i in range(2)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_register_at, [(str(root), "warm-up", str(srcs[0]), 0.0)] * 2)  # imports
        for trial in range(6):
            name = f"race-{trial}"
            start = time.time() + 0.5
            versions = pool.map(_register_at, [(str(root), name, str(s), start) for s in srcs])
            assert sorted(versions) == ["1", "2"], f"trial {trial}: {versions}"
    mp_ = pytest.MonkeyPatch()
    mp_.setenv("DV_DATA_ROOT", str(root))
    try:
        reg = ModelRegistry()
        for trial in range(6):
            vs = reg.client.search_model_versions(f"name='race-{trial}'")
            assert sorted(str(v.version) for v in vs) == ["1", "2"]
            assert all(v.tags.get("status") == "complete" for v in vs)
            assert reg.get(f"race-{trial}", alias="candidate").version in ("1", "2")
    finally:
        mp_.undo()
