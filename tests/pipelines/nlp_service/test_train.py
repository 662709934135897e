"""Training both ways through core.train, the out-of-scope threshold, the evaluation reports
and the compressed model's parity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.nlp_service import model as M
from pipelines.nlp_service.config import INTENTS, OOS, SynthConfig, TrainConfig
from pipelines.nlp_service.evaluate import intent_report, joint_goal_accuracy, slot_scores
from pipelines.nlp_service.synth import dialogues, messages
from pipelines.nlp_service.train import choose_threshold, pairs, split


@pytest.mark.xdist_group("nlp_model")
def test_the_trained_model_beats_chance_on_other_seeds(trained):
    an = M.Analyzer(trained["model"], prefer="torch")
    held = messages(SynthConfig(per_intent=4, seed=77))  # another seed than training
    rep = intent_report(an, held)
    assert rep["accuracy"] > 3 / len(INTENTS)  # 30 steps of training: far above 1/24
    assert rep["labels"][0] in INTENTS and len(rep["confusion"]) == len(rep["labels"])
    meta = json.loads((trained["model"] / "config.json").read_text())
    assert meta["intents"] == list(INTENTS) and 0.0 <= meta["oos_threshold"] < 1.0
    for f in ("model.safetensors", "metrics.json", "model_card.md", "tokenizer.json"):
        assert (trained["model"] / f).is_file()
    s = slot_scores(an, [e for e in held if e.slots])
    assert 0.0 <= s["f1"] <= 1.0 and s["n"] > 0
    j = joint_goal_accuracy(an, dialogues(SynthConfig(dialogues=10, seed=8)))
    assert j["turns"] > 20 and 0.0 <= j["joint_goal_accuracy"] <= 1.0


@pytest.mark.xdist_group("nlp_model")
def test_onnx_int8_agrees_with_fp32(trained):
    p = trained["parity"]
    assert p["cosine_mean"] > 0.95 and p["intent_agreement"] > 0.9
    assert p["served"] in ("int8", "fp32") and (trained["model"] / "model.onnx").is_file()
    torch_an = M.Analyzer(trained["model"], prefer="torch")
    onnx_an = M.Analyzer(trained["model"], prefer="onnx", onnx_file="model.fp32.onnx")
    texts = ["where is my order 12345", "my card was stolen", "hello"]
    assert np.allclose(torch_an.probs(texts), onnx_an.probs(texts), atol=1e-4)


def test_threshold_rejects_unsure_messages_into_out_of_scope():
    intents = ["a", "b", OOS]
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8], [0.45, 0.5, 0.05]])
    y = np.array([0, 2, 2, 2])  # the unsure ones are out of scope
    thr, acc = choose_threshold(probs, y, intents)
    assert 0.5 < thr <= 0.9 and acc == 1.0
    pred, _ = M.apply_threshold(probs, intents, thr)
    assert pred.tolist() == [0, 2, 2, 2]


def test_split_is_stratified_and_pairs_are_balanced():
    ex = messages(SynthConfig(per_intent=10, seed=1))
    tr, va = split(ex, 0.2, 0)
    assert {e.intent for e in va} == {e.intent for e in tr} == set(INTENTS)
    assert not {id(e) for e in tr} & {id(e) for e in va}
    pp = pairs(ex[:60], 4, 0)
    same = [ex[i].intent == ex[j].intent for i, j, _ in pp]
    assert same == [t == 1.0 for _, _, t in pp]
    assert 0.4 < np.mean(same) <= 0.5


def test_few_shot_uses_k_examples_per_intent(tmp_path):
    from pipelines.nlp_service.train import train

    cfg = TrainConfig(
        out_dir=str(tmp_path / "few"),
        synth=SynthConfig(per_intent=6, dialogues=10),
        few_shot=3,
        max_steps=6,
        pairs_per_example=2,
    )
    out = train(cfg)
    m = json.loads((out / "metrics.json").read_text())
    assert m["train_examples"] == 3 * len(INTENTS)
    meta = json.loads((out / "config.json").read_text())
    assert meta["mode"] == "few_shot_3"
    # the logistic-regression head was copied into the net: its predictions are the net's
    an = M.Analyzer(out, prefer="torch")
    seen = {
        a.intent for a in an.analyze([e.text for e in messages(SynthConfig(per_intent=2, seed=9))])
    }
    assert len(seen) >= 4


def test_user_file_with_own_taxonomy_trains(tmp_path):
    from pipelines.nlp_service.train import train

    rows = [{"text": f"book a table for {n}", "intent": "book"} for n in range(2, 12)]
    rows += [
        {"text": f"show me the {d} menu", "intent": "menu"}
        for d in ("lunch", "dinner", "kids", "wine", "dessert", "vegan")
    ]
    rows += [
        {"text": t, "intent": OOS}
        for t in ("what's the weather", "tell me a story", "who won", "play music")
    ]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = train(TrainConfig(data=str(data), out_dir=str(tmp_path / "m"), max_steps=3, batch_size=8))
    assert json.loads((out / "config.json").read_text())["intents"] == ["book", "menu", OOS]
