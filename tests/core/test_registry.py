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
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"arch": "digits_cnn", "score": score}))
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "metrics.json").write_text(json.dumps({"val/accuracy": score}))
    (path / "model_card.md").write_text("# card\n")
    return path


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
    assert w.check()() == ("m-watch", "2") and w.check() is None
