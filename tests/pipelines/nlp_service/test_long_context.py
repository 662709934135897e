"""The long encoder: on what the original can read it equals the original, past 512 tokens
its sliding-window path equals the dense band-mask path, and the global tokens carry a fact
from the start of a long input to the classification token."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from pipelines.nlp_service import model as M
from pipelines.nlp_service.long_context import extend, global_positions


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return M.build(4).eval()


@pytest.fixture(scope="module")
def tok():
    return M.load_tokenizer()


def test_full_window_equals_the_original_encoder(net, tok):
    enc = tok(["where is my order 4821339", "hi"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    ref = net.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    long = extend(net, max_positions=2048, window=ids.shape[1])
    g = global_positions(ids[0], tok.cls_token_id, tok.sep_token_id)
    with torch.no_grad():
        got = long(ids, mask, g)
    real = mask.bool()
    assert torch.allclose(got[real], ref[real], atol=2e-5)
    # the new positions start as copies of the learned ones
    w = net.encoder.embeddings.position_embeddings.weight
    assert torch.equal(long.position.weight[512:1024], w) and torch.equal(
        long.position.weight[1536:2048], w
    )


def test_sliding_window_equals_dense_band_past_512_tokens(net, tok):
    turns = [f"turn {i}: my order number is {1000 + i}" for i in range(80)]
    ids = tok(" [SEP] ".join(turns), return_tensors="pt")["input_ids"][:, :900]
    mask = torch.ones_like(ids)
    mask[:, -20:] = 0  # padding at the end must be invisible on both paths
    g = global_positions(ids[0], tok.cls_token_id, tok.sep_token_id)
    assert ids.shape[1] > 512 and len(g) > 10
    swa = extend(net, 1024, window=[16, 16, 32, 32, 64, 64])
    dense = extend(net, 1024, window=[16, 16, 32, 32, 64, 64], attention="dense")
    with torch.no_grad():
        a, b = swa(ids, mask, g), dense(ids, mask, g)
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=5e-5)


def test_globals_reach_across_the_window(net, tok):
    ids = tok("x " * 1500, return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    long = extend(net, 2048, window=8)
    g = torch.tensor([0])
    with torch.no_grad():
        base = long(ids, mask, g)[0, 0]
        ids2 = ids.clone()
        ids2[0, 1000] = tok.convert_tokens_to_ids("order")  # far outside CLS's... own window
        moved = long(ids2, mask, g)[0, 0]
        no_global = long(ids2, mask, torch.tensor([], dtype=torch.long))[0, 0]
        no_global_base = long(ids, mask, torch.tensor([], dtype=torch.long))[0, 0]
    assert not torch.allclose(base, moved, atol=1e-4)  # CLS is global: it sees token 1000
    # without globals, 6 layers of window 8 reach 48 tokens: token 1000 cannot move CLS
    assert torch.allclose(no_global, no_global_base, atol=1e-6)


def test_bad_settings_are_refused(net, tok):
    with pytest.raises(ConfigError, match="window"):
        extend(net, window=[8, 8])
    long = extend(net, 600, window=8)
    ids = torch.ones(1, 700, dtype=torch.long)
    with pytest.raises(ConfigError, match="exceed"):
        long(ids, torch.ones_like(ids), torch.tensor([0]))


def test_continued_training_runs_through_core_train_on_a_copy(net, tok):
    import random

    from pipelines.nlp_service.config import LongConfig, SynthConfig
    from pipelines.nlp_service.long_context import encode_conversations, train_long
    from pipelines.nlp_service.synth import PLANS, long_conversation

    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = LongConfig(train_conversations=2, train_chars=1500, epochs=1)
    model = train_long(net, tok, cfg, max_positions=1024, window=16)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # net untouched
    assert model.head.out_features == len(PLANS)
    q_new = model.encoder.layers[0].attention.self.query.weight
    q_old = net.encoder.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(q_new, q_old)  # the copy's encoder was trained, not only the head
    c = long_conversation(random.Random(3), 3000, SynthConfig())
    x = encode_conversations(tok, [c], 1024)
    assert (
        x.shape[-1] > 512
        and PLANS[c.plan].lower().split()[0] in " ".join(c.turns[: c.fact_turn + 1]).lower()
    )
    with torch.no_grad():
        assert model(x).shape == (1, len(PLANS))
