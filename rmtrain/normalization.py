"""Reward normalisation statistics: measured on held-out pairs, kept in an exported folder's config.json.

A PPO trainer wants rewards of a known scale. The statistics are the mean and standard deviation of
all scores (chosen and rejected sides) of a validation set, measured as OpenRLHF's reward-model
trainer measures them (`torch.std`, the unbiased estimate, at least 1e-8), and written where
OpenRLHF reads them: `mean` and `std` in config.json, with `normalize_reward: false` so that
OpenRLHF applies them only when its reward normalisation is switched on. `rmtrain eval --normalize`
and `rmtrain serve --normalize` apply the same `(score - mean) / std`.
"""

import json
import math
import os
from dataclasses import dataclass

import torch

from rmtrain.errors import EvaluationError

MIN_STD = 1e-8  # OpenRLHF clamps the std here, so a constant score never divides by zero
README_LINE_START = "Score normalisation:"  # the README line that --write-stats replaces


@dataclass(frozen=True)
class ScoreNormalization:
    mean: float
    std: float

    def apply(self, scores: list[float]) -> list[float]:
        """`(score - mean) / std` of each score."""
        return [(score - self.mean) / self.std for score in scores]

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std}


def measure_normalization(scores: list[float]) -> ScoreNormalization:
    """Mean and unbiased standard deviation (at least MIN_STD) of the scores, as OpenRLHF measures them."""
    if len(scores) < 2:
        raise EvaluationError(f"normalisation statistics need at least 2 scores, got {len(scores)}")
    values = torch.tensor(scores, dtype=torch.float64)
    return ScoreNormalization(mean=values.mean().item(), std=max(values.std().item(), MIN_STD))


def read_normalization(folder: str) -> ScoreNormalization | None:
    """The statistics in `folder`/config.json, or None when it has none."""
    config = _read_config(folder)
    if "mean" not in config and "std" not in config:
        return None
    mean, std = config.get("mean"), config.get("std")
    for name, value in (("mean", mean), ("std", std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EvaluationError(f"{folder}/config.json: '{name}' must be a finite number, got {value!r}")
    if std <= 0:
        raise EvaluationError(f"{folder}/config.json: 'std' must be positive, got {std!r}")
    return ScoreNormalization(mean=float(mean), std=float(std))


def require_normalization(folder: str) -> ScoreNormalization:
    """The statistics in `folder`/config.json; EvaluationError saying how to measure them when there are none."""
    stats = read_normalization(folder)
    if stats is None:
        raise EvaluationError(
            f"{folder}/config.json has no normalisation statistics (mean, std); measure them with "
            f"`rmtrain eval {folder} VALIDATION_DATA --write-stats`"
        )
    return stats


def write_normalization(folder: str, stats: ScoreNormalization, measured_on: str) -> None:
    """Write the statistics into `folder`/config.json and a line into its README.md (replacing earlier ones)."""
    config = _read_config(folder)
    config["mean"], config["std"] = stats.mean, stats.std
    config.setdefault("normalize_reward", False)  # OpenRLHF: apply only when the trainer asks for it
    with open(os.path.join(folder, "config.json"), "w") as file:
        file.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    line = (
        f"{README_LINE_START} mean {stats.mean:.6g}, std {stats.std:.6g}, measured on {measured_on}; "
        "`(score - mean) / std` gives rewards of mean 0 and std 1 on that data (config.json: `mean`, `std`)."
    )
    readme = os.path.join(folder, "README.md")
    lines = open(readme).read().splitlines() if os.path.isfile(readme) else []
    lines = [existing for existing in lines if not existing.startswith(README_LINE_START)]
    while lines and not lines[-1].strip():
        lines.pop()
    with open(readme, "w") as file:
        file.write("\n".join([*lines, "", line]) + "\n")


def _read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError as error:
        raise EvaluationError(f"{path} not found: normalisation statistics live in an exported folder") from error
    except ValueError as error:
        raise EvaluationError(f"{path} is not valid JSON: {error}") from error
