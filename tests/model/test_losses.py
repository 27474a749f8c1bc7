"""Tests for rmtrain.model.losses: ranking / focal losses and score penalties, checked by hand."""

import math

import pytest
import torch

from rmtrain.model.losses import (
    focal_ranking_loss,
    l2_penalty,
    log_barrier_penalty,
    pair_loss,
    ranking_loss,
    score_penalty,
)

CHOSEN = torch.tensor([2.0, 0.5, -1.0, 0.0, 3.0, -4.0])
REJECTED = torch.tensor([1.0, 1.5, -1.0, 2.0, -3.0, 1.0])


def _log_sigmoid(x: float) -> float:
    return math.log(1.0 / (1.0 + math.exp(-x)))


def test_ranking_loss_by_hand():
    loss = ranking_loss(CHOSEN, REJECTED)
    assert loss.shape == CHOSEN.shape
    for c, r, value in zip(CHOSEN.tolist(), REJECTED.tolist(), loss.tolist()):
        assert value == pytest.approx(-_log_sigmoid(c - r), rel=1e-5, abs=1e-6)
    # a tie costs log 2
    assert loss[2].item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_ranking_loss_margin_shifts_delta():
    margin = torch.tensor([0.5, 1.0, 0.0, -1.0, 2.0, 0.25])
    loss = ranking_loss(CHOSEN, REJECTED, margin)
    expected = ranking_loss(CHOSEN - margin, REJECTED)
    torch.testing.assert_close(loss, expected)
    for c, r, m, value in zip(CHOSEN.tolist(), REJECTED.tolist(), margin.tolist(), loss.tolist()):
        assert value == pytest.approx(-_log_sigmoid(c - r - m), rel=1e-5, abs=1e-6)
    # a positive margin makes a correctly ordered pair cost more
    assert loss[0] > ranking_loss(CHOSEN, REJECTED)[0]


def test_ranking_loss_decreases_with_delta():
    deltas = torch.linspace(-5, 5, 21)
    loss = ranking_loss(deltas, torch.zeros_like(deltas))
    assert torch.all(loss[1:] < loss[:-1])


def test_focal_loss_formula():
    gamma = 2.0
    loss = focal_ranking_loss(CHOSEN, REJECTED, gamma=gamma)
    for c, r, value in zip(CHOSEN.tolist(), REJECTED.tolist(), loss.tolist()):
        delta = c - r
        p = 2.0 * max(1.0 / (1.0 + math.exp(-delta)) - 0.5, 0.0)
        assert value == pytest.approx((1.0 - p) ** gamma * -_log_sigmoid(delta), rel=1e-5, abs=1e-6)


def test_focal_loss_gamma_and_margin():
    margin = torch.tensor([0.5, 0.0, 0.0, 0.0, 1.0, 0.0])
    loss = focal_ranking_loss(CHOSEN, REJECTED, margin, gamma=1.0)
    delta = CHOSEN - REJECTED - margin
    p = 2.0 * torch.relu(torch.sigmoid(delta) - 0.5)
    torch.testing.assert_close(loss, (1.0 - p) * -torch.nn.functional.logsigmoid(delta))


def test_focal_le_ranking_and_equal_for_nonpositive_delta():
    focal = focal_ranking_loss(CHOSEN, REJECTED)
    ranking = ranking_loss(CHOSEN, REJECTED)
    assert torch.all(focal <= ranking + 1e-7)
    nonpositive = (CHOSEN - REJECTED) <= 0
    assert nonpositive.any() and (~nonpositive).any()
    torch.testing.assert_close(focal[nonpositive], ranking[nonpositive])
    assert torch.all(focal[~nonpositive] < ranking[~nonpositive])


def test_pair_loss_dispatch_and_bad_name():
    torch.testing.assert_close(pair_loss(CHOSEN, REJECTED, None, "ranking"), ranking_loss(CHOSEN, REJECTED))
    torch.testing.assert_close(pair_loss(CHOSEN, REJECTED, None, "focal"), focal_ranking_loss(CHOSEN, REJECTED))
    with pytest.raises(ValueError, match="loss_type"):
        pair_loss(CHOSEN, REJECTED, None, "hinge")


def test_log_barrier_by_hand():
    scores = torch.tensor([0.0, 1.0, -2.5, 4.0])
    penalty = log_barrier_penalty(scores)
    for s, value in zip(scores.tolist(), penalty.tolist()):
        assert value == pytest.approx(-math.log(5.0 - s) - math.log(s + 5.0), rel=1e-5)


def test_log_barrier_finite_at_band_edges_and_outside():
    scores = torch.tensor([-5.0, 5.0, -100.0, 100.0])
    penalty = log_barrier_penalty(scores)
    assert torch.isfinite(penalty).all()
    assert penalty.dtype == torch.float32


def test_log_barrier_larger_near_band():
    scores = torch.tensor([0.0, 2.0, 4.0, 4.9, 4.99, -4.99])
    penalty = log_barrier_penalty(scores)
    assert torch.all(penalty[1:5] > penalty[0:4])  # grows towards the edge
    assert penalty[5] == pytest.approx(penalty[4].item(), rel=1e-5)  # symmetric
    assert penalty[0] == penalty.min()


def test_log_barrier_half_precision_input_is_fp32():
    penalty = log_barrier_penalty(torch.tensor([4.999, -4.999], dtype=torch.bfloat16))
    assert penalty.dtype == torch.float32
    assert torch.isfinite(penalty).all()


def test_score_penalty_types():
    scores = torch.tensor([0.5, -2.0, 3.0])
    none = score_penalty(scores, "none")
    assert none.shape == scores.shape and none.dtype == torch.float32
    assert torch.count_nonzero(none) == 0
    torch.testing.assert_close(score_penalty(scores, "l2"), scores.pow(2))
    torch.testing.assert_close(l2_penalty(scores), torch.tensor([0.25, 4.0, 9.0]))
    torch.testing.assert_close(score_penalty(scores, "log_barrier"), log_barrier_penalty(scores))
    with pytest.raises(ValueError, match="penalty_type"):
        score_penalty(scores, "l1")
