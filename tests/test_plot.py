"""Tests for rmtrain.plot and `rmtrain plot`: scalars of resumed runs merged by step, validation lines, the PNG."""

import json
from pathlib import Path

import pytest

from rmtrain import cli
from rmtrain.errors import RmtrainError
from rmtrain.plot import (
    find_run_scalars,
    is_validation_line,
    plot_training_curves,
    read_curves,
)


def _train_line(step: int, loss: float) -> dict:
    return {
        "lr": 1e-3, "data_time": 0.01, "grad_norm": 1.0, "loss": loss, "acc": 0.5 + step / 200,
        "chosen_score_mean": step / 50, "rejected_score_mean": -step / 50, "num_samples": 16.0,
        "time": 0.1, "iter": step, "memory": 800, "step": step,
    }  # fmt: skip


def _write_run(work_dir: Path, timestamp: str, lines: list[dict], tail: str = "") -> Path:
    path = work_dir / timestamp / "vis_data" / "scalars.json"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + tail)
    return path


@pytest.fixture
def work_dir(tmp_path):
    """An older unrelated run, a fresh run with validation, and its resumption (from step 30) with validation."""
    _write_run(tmp_path, "20260101_000000", [_train_line(s, 9.0) for s in range(10, 101, 10)])
    first = [_train_line(s, 1.0) for s in range(10, 51, 10)]
    # mmengine's default validation line: the metrics without prefix, no lr/iter.
    first.insert(3, {"accuracy": 0.70, "margin_mean": 1.0, "data_time": 0.01, "time": 0.05, "step": 30})
    _write_run(tmp_path, "20260102_000000", first)
    second = [_train_line(s, 2.0) for s in range(40, 81, 10)]
    second.insert(2, {"val/accuracy": 0.80, "val/margin_mean": 2.0, "step": 60})
    # A run killed while writing leaves a cut last line.
    _write_run(tmp_path, "20260102_010000", second, tail='{"lr": 0.001, "loss"')
    (tmp_path / "20260103_000000" / "vis_data").mkdir(parents=True)  # died before its first log line
    (tmp_path / "20260103_000000" / "vis_data" / "scalars.json").write_text("")
    return tmp_path


def test_newest_run_and_the_run_it_resumed(work_dir):
    runs = [path.parents[1].name for path in find_run_scalars(work_dir)]
    assert runs == ["20260102_000000", "20260102_010000"]  # the older fresh run is not part of it


def test_resumed_runs_merge_by_step_later_wins(work_dir):
    curves = read_curves(find_run_scalars(work_dir))
    assert sorted(curves.train) == list(range(10, 81, 10))
    assert curves.series("train", "loss")[1] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert curves.series("val", "accuracy") == ([30, 60], [0.70, 0.80])
    assert curves.series("val", "margin_mean") == ([30, 60], [1.0, 2.0])


def test_run_option_picks_an_older_run(work_dir):
    assert [p.parents[1].name for p in find_run_scalars(work_dir, run="20260101_000000")] == ["20260101_000000"]
    with pytest.raises(RmtrainError, match="no such run"):
        find_run_scalars(work_dir, run="20990101_000000")


def test_validation_lines_are_recognised():
    assert is_validation_line({"val/accuracy": 0.8, "step": 10})
    assert is_validation_line({"val_accuracy": 0.8, "step": 10})
    assert is_validation_line({"accuracy": 0.8, "loss": 0.3, "time": 0.1, "step": 10})  # mmengine default
    assert not is_validation_line(_train_line(10, 0.5))
    assert not is_validation_line({"train/lr": 1e-3, "train/loss": 0.4, "step": 10})  # log_with_hierarchy


def test_plot_writes_png(work_dir):
    out = plot_training_curves(str(work_dir))
    assert out == work_dir / "training_curves.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_cli_plot_out_and_timestamp_folder(work_dir, tmp_path, capsys):
    out = tmp_path / "plots" / "curves.png"
    assert cli.main(["plot", str(work_dir / "20260102_000000"), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert out.stat().st_size > 10_000


def test_cli_plot_no_scalars_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "20260101_000000" / "vis_data").mkdir(parents=True)
    assert cli.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no scalars" in err and "scalars.json" in err
    assert cli.main(["plot", str(tmp_path / "missing")]) == 2
