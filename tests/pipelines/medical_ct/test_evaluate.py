"""Nodule measurements and the LUNA16-style metrics, on cases whose answers are known."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.medical_ct.data import Volume
from pipelines.medical_ct.evaluate import (
    CaseResult,
    case_dice,
    evaluate_cases,
    froc,
    match,
    sensitivity_at,
)
from pipelines.medical_ct.nodules import FoundNodule, find_nodules


def _ball(shape, spacing, centre_mm_zyx, r_mm):
    z, y, x = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    cz, cy, cx = centre_mm_zyx
    return (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r_mm**2


def _vol(shape=(40, 64, 64), spacing=(1.25, 0.7, 0.7), fill=-850.0):
    return Volume(np.full(shape, fill, np.float32), spacing, (-20.0, -30.0, 100.0), np.eye(3))


@pytest.mark.parametrize(
    "hu,kind", [(40.0, "solid"), (-600.0, "ground_glass"), (500.0, "calcified")]
)
def test_a_ball_is_measured(hu, kind):
    vol = _vol()
    ball = _ball(vol.shape, vol.spacing, (25.0, 22.0, 20.0), 5.0)
    vol.array[ball] = hu
    prob = ball.astype(np.float32) * 0.9
    found, labels = find_nodules(prob, vol)
    assert len(found) == 1
    f = found[0]
    assert f.diameter_mm == pytest.approx(10.0, abs=0.4)
    assert f.longest_axial_mm == pytest.approx(10.0, abs=1.0)
    assert f.volume_mm3 == pytest.approx(4 / 3 * np.pi * 125, rel=0.06)
    np.testing.assert_allclose(f.centre_voxel, (20.0, 22 / 0.7, 20 / 0.7), atol=0.2)
    np.testing.assert_allclose(f.centre_mm, vol.index_to_patient(f.centre_voxel), atol=1e-9)
    assert f.slice == 20 and f.type == kind and f.confidence == pytest.approx(0.9)
    assert f.mean_hu == pytest.approx(hu)
    assert (labels == 1).sum() == ball.sum()


def test_part_solid_specks_and_order_by_confidence():
    vol = _vol()
    a = _ball(vol.shape, vol.spacing, (25.0, 15.0, 15.0), 6.0)
    core = _ball(vol.shape, vol.spacing, (25.0, 15.0, 15.0), 3.0)
    b = _ball(vol.shape, vol.spacing, (25.0, 32.0, 32.0), 4.0)
    vol.array[a] = -600
    vol.array[core] = 30
    prob = a * 0.6 + b * 0.95
    prob[5, 5, 5] = 0.99  # one voxel: below min_diameter_mm
    found, labels = find_nodules(prob.astype(np.float32), vol, min_diameter_mm=2.0)
    assert [f.confidence for f in found] == pytest.approx([0.95, 0.6])
    assert found[1].type == "part_solid"
    assert labels[5, 5, 5] == 0 and labels.max() == 2
    with pytest.raises(ValueError, match="not on the volume's grid"):
        find_nodules(prob[:-1], vol)


def _cand(conf, xyz):
    return FoundNodule(0, (0, 0, 0), tuple(xyz), 0, 0.0, 6.0, 100.0, 0.0, "solid", conf)


def test_match_uses_the_true_radius_in_mm():
    true = [
        {"id": 1, "centre_mm": np.array([0.0, 0, 0]), "diameter_mm": 10.0},
        {"id": 2, "centre_mm": np.array([8.0, 0, 0]), "diameter_mm": 4.0},
    ]
    got = match(
        [
            _cand(0.9, (4.9, 0, 0)),
            _cand(0.9, (5.1, 0, 0)),
            _cand(0.9, (7.0, 0, 0)),
            _cand(0.9, (0, 9, 0)),
        ],
        true,
    )
    assert got == [1, 0, 2, 0]  # 5.1 mm is outside 1 (r 5) and 2 (r 2); 7.0 is nearer 2


def test_froc_and_cpm_follow_luna16_rules():
    # scan A: nodules 1, 2; scan B: nodules 3, 4 (never found)
    a = CaseResult(
        "A",
        None,
        2,
        0,
        0,
        [
            {"confidence": 0.9, "hit": 1},
            {"confidence": 0.8, "hit": 0},
            {"confidence": 0.7, "hit": 1},  # second hit on nodule 1: neither TP nor FP
            {"confidence": 0.6, "hit": 2},
        ],
    )
    b = CaseResult(
        "B",
        None,
        2,
        0,
        0,
        [
            {"confidence": 0.95, "hit": 0},
            {"confidence": 0.5, "hit": 3},
            {"confidence": 0.4, "hit": 0},
        ],
    )
    fps, sens = froc([a, b], 4)
    np.testing.assert_allclose(fps, [0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.5])
    np.testing.assert_allclose(sens, [0, 0, 0.25, 0.25, 0.5, 0.75, 0.75])
    at = sensitivity_at(fps, sens)
    assert at == {
        "0.125": 0.0,
        "0.25": 0.0,
        "0.5": 0.25,
        "1.0": 0.75,
        "2.0": 0.75,
        "4.0": 0.75,
        "8.0": 0.75,
    }


def test_dice_is_per_case_and_ignores_nodules_under_5mm():
    big = np.zeros((30, 40, 40), np.int16)
    big[5:25, 5:35, 5:35] = 1
    half = np.zeros_like(big)
    half[10:14, 10:14, 10:14] = 1
    pred_half = np.zeros_like(big)
    pred_half[10:14, 10:14, 10:12] = 1  # half of it: dice 2/3
    true_big = [{"id": 1, "diameter_mm": 20.0}]
    assert case_dice(big, big, true_big, 5.0) == pytest.approx(1.0)
    assert case_dice(pred_half, half, [{"id": 1, "diameter_mm": 6.0}], 5.0) == pytest.approx(2 / 3)
    # a 3 mm nodule: missing it, or finding it, changes nothing
    small = half.copy()
    small[20:22, 20:22, 20:22] = 2
    t = [{"id": 1, "diameter_mm": 6.0}, {"id": 2, "diameter_mm": 3.0}]
    assert case_dice(pred_half, small, t, 5.0) == pytest.approx(2 / 3)
    assert case_dice(pred_half + (small == 2), small, t, 5.0) == pytest.approx(2 / 3)
    assert case_dice(np.zeros_like(big), np.zeros_like(big), [], 5.0) is None


def test_evaluate_cases_oracle_and_blind():
    cases = []
    for k in range(3):
        vol = _vol()
        m = np.zeros(vol.shape, np.int16)
        truth = []
        for j, (c, r) in enumerate(
            [((25.0, 15.0, 15.0), 5.0), ((20.0, 30.0, 32.0), 3.5)][: 1 + k % 2], start=1
        ):
            ball = _ball(vol.shape, vol.spacing, c, r)
            m[ball] = j
            vol.array[ball] = 40
            centre = vol.index_to_patient(np.argwhere(ball).mean(0))
            truth.append({"id": j, "centre_mm": centre.tolist(), "diameter_mm": 2 * r})
        cases.append(SimpleNamespace(name=f"c{k}", volume=vol, mask=m, truth=truth))
    oracle = evaluate_cases(cases, lambda v: find_nodules((v.array > 0).astype(np.float32), v))
    assert oracle.n_nodules == 4 and oracle.cpm == pytest.approx(1.0) and oracle.fp_per_scan == 0
    assert oracle.dice_mean == pytest.approx(1.0)
    assert oracle.diameter_mae_mm < 0.5
    blind = evaluate_cases(cases, lambda v: find_nodules(np.zeros(v.shape, np.float32), v))
    assert blind.cpm == 0.0 and blind.sensitivity == 0.0 and blind.dice_mean == 0.0
