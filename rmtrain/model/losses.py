"""Pairwise ranking losses and score penalties. Inputs are per-pair scores of shape [pairs].

Each function returns the per-pair (or per-score) terms, not their mean, so the caller decides
how to average (over pairs here; over ranks in distributed runs).
"""

import torch
import torch.nn.functional as F

LOSS_TYPES = ("ranking", "focal")
PENALTY_TYPES = ("log_barrier", "l2", "none")


def ranking_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(chosen - rejected - margin)."""
    delta = chosen - rejected
    if margin is not None:
        delta = delta - margin
    return -F.logsigmoid(delta)


def focal_ranking_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None, gamma: float = 2.0
) -> torch.Tensor:
    """The InternLM2 report's focal ranking loss: easy pairs (P(chosen > rejected) near 1) weigh less.

    p = 2 * relu(sigmoid(delta) - 1/2) rises from 0 (a coin flip or worse) to 1 (certain);
    loss = (1 - p)^gamma * -log sigmoid(delta).
    """
    delta = chosen - rejected
    if margin is not None:
        delta = delta - margin
    p = 2.0 * F.relu(torch.sigmoid(delta) - 0.5)
    return (1.0 - p).pow(gamma) * -F.logsigmoid(delta)


def log_barrier_penalty(scores: torch.Tensor, bound: float = 5.0, epsilon: float = 1e-3) -> torch.Tensor:
    """-log(bound - s) - log(s + bound): keeps scores inside (-bound, bound).

    Computed in fp32; scores are clamped just inside the band so the log stays finite (scores
    outside the band then get no gradient from the penalty, only from the ranking loss).
    """
    scores = scores.float().clamp(-bound + epsilon, bound - epsilon)
    return -torch.log(bound - scores) - torch.log(scores + bound)


def l2_penalty(scores: torch.Tensor) -> torch.Tensor:
    return scores.float().pow(2)


def pair_loss(chosen, rejected, margin, loss_type: str) -> torch.Tensor:
    if loss_type == "ranking":
        return ranking_loss(chosen, rejected, margin)
    if loss_type == "focal":
        return focal_ranking_loss(chosen, rejected, margin)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got '{loss_type}'")


def score_penalty(scores, penalty_type: str) -> torch.Tensor:
    if penalty_type == "log_barrier":
        return log_barrier_penalty(scores)
    if penalty_type == "l2":
        return l2_penalty(scores)
    if penalty_type == "none":
        return torch.zeros_like(scores, dtype=torch.float32)
    raise ValueError(f"penalty_type must be one of {PENALTY_TYPES}, got '{penalty_type}'")
