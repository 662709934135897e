"""The lung field: every phantom nodule inside it (those on the pleura too), the air and the
spine outside, and no field where there is no lung."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.medical_ct.lungs import bounding_box, lung_field
from pipelines.medical_ct.model import ModelConfig, predict_probability
from pipelines.medical_ct.synth import render_study
from tests.pipelines.medical_ct.conftest import small_cfg


def test_every_nodule_touches_the_lung_field_and_the_air_around_the_body_does_not():
    attached = set()
    for seed in range(4):
        cfg = small_cfg(seed=40 + seed, nodules=(3, 4), diameter_mm=(3.0, 20.0))
        vol, mask, nodules, _ = render_study(cfg, 0)
        field = lung_field(vol.array, vol.spacing)
        assert field is not None
        box = bounding_box(field, (4, 8, 8))
        for nod in nodules:
            m = mask == nod.id
            assert field[m].any(), (seed, nod)  # the component is kept (whole)
            assert m[box].sum() == m.sum(), (seed, nod)  # and the network sees all of it
            attached.add(nod.attached)
        assert not field[0, 0, 0] and not field[:, :, 0].any()  # the corner air, the edge column
        assert 0.05 < field.mean() < 0.6
    assert "pleura" in attached  # the hard case was exercised


def test_no_lung_no_field_and_the_model_then_reads_the_whole_volume():
    solid = np.full((12, 40, 40), 40.0, np.float32)  # a block of soft tissue, no air inside
    assert lung_field(solid, (2.0, 2.0, 2.0)) is None
    assert lung_field(np.full((12, 40, 40), -1000.0, np.float32), (2.0, 2.0, 2.0)) is None
    mask = np.zeros((5, 6, 7), bool)
    mask[1:3, 2, 3:6] = True
    assert bounding_box(mask, (1, 1, 1)) == (slice(0, 4), slice(1, 4), slice(2, 7))


def test_inside_the_field_the_probability_is_monais_whole_volume_one():
    """Only windows holding a field voxel run; every window over a field voxel did run, so
    there the result must equal MONAI's sliding_window_inference over the whole grid."""
    from pipelines.medical_ct.model import build_unet, hu_on_model_grid, sliding_window, window

    torch.manual_seed(0)
    vol = render_study(small_cfg(seed=7), 0)[0]
    cfg = ModelConfig(filters=(4, 8, 8), roi=(8, 16, 16), spacing_mm=(2.5, 2.5, 2.5), overlap=0.5)
    net = build_unet(filters=(4, 8, 8)).eval()
    x = window(hu_on_model_grid(vol, cfg), cfg.hu_window)
    field = lung_field(x[0, 0].numpy() * 1400 - 1000, cfg.spacing_mm)
    assert field is not None and 0.05 < field.mean() < 0.6
    ours = sliding_window(net, x, cfg, field)
    ref = sliding_window(net, x, cfg)  # MONAI, every window
    f = torch.from_numpy(field)
    torch.testing.assert_close(ours[:, :, f], ref[:, :, f], rtol=1e-4, atol=1e-5)
    assert torch.isnan(ours).any()  # far from the lungs no window ran


def test_probability_outside_every_kept_window_is_zero_and_the_field_comes_back():
    vol = render_study(small_cfg(seed=7), 0)[0]
    cfg = ModelConfig(filters=(4, 8), roi=(8, 16, 16), spacing_mm=vol.spacing)

    def constant(x: torch.Tensor) -> torch.Tensor:  # p(nodule) = 0.73 everywhere
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[:, 1] = 1.0
        return out

    prob, field = predict_probability(constant, vol, cfg)
    p = 1 / (1 + np.exp(-1.0))
    assert field is not None and field.shape == vol.shape
    assert np.allclose(prob[field], p, atol=1e-4)
    assert (prob == 0).any() and not np.isnan(prob).any()  # no window ran there: 0, not NaN
    cfg.lung_field = False
    whole, none = predict_probability(constant, vol, cfg)
    assert none is None and np.allclose(whole, p, atol=1e-4)


def test_a_component_outside_the_field_is_dropped_and_one_touching_it_kept_whole():
    from pipelines.medical_ct.nodules import find_nodules

    vol = render_study(small_cfg(seed=7), 0)[0]
    field = np.zeros(vol.shape, bool)
    field[:, :, : vol.shape[2] // 2] = True  # the left half
    prob = np.zeros(vol.shape, np.float32)
    z, cx = vol.shape[0] // 2, vol.shape[2] // 2
    prob[z - 2 : z + 2, 10:16, cx - 3 : cx + 3] = 0.9  # straddles the field's edge
    prob[z - 2 : z + 2, 30:36, -10:-4] = 0.8  # wholly outside
    found, labels = find_nodules(prob, vol, 0.5, 0.0, within=field)
    assert len(found) == 1 and found[0].confidence == pytest.approx(0.9)
    assert (labels > 0).sum() == 4 * 6 * 6  # kept whole, the part outside the field too
    assert len(find_nodules(prob, vol, 0.5, 0.0)[0]) == 2
