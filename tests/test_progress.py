"""Tests for rmtrain.progress: plain log lines off a terminal, a tqdm bar on one."""

import io
import logging
import sys

import datasets
import datasets.utils
import pytest

from rmtrain.progress import datasets_progress, is_interactive, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def lines():
    """A logger that keeps its messages, and the list they go to."""
    logger = logging.getLogger("rmtrain-test-progress")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    kept = []
    handler = logging.Handler()
    handler.emit = lambda record: kept.append(record.getMessage())
    logger.addHandler(handler)
    yield logger, kept
    logger.removeHandler(handler)


def test_is_interactive_follows_stderr(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not is_interactive()
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert is_interactive()
    monkeypatch.setattr(sys, "stderr", object())  # no isatty at all
    assert not is_interactive()


def test_progress_off_terminal_prints_about_every_tenth(monkeypatch, lines):
    logger, kept = lines
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    items = list(progress(range(100), desc="score pairs", every_seconds=1e9, logger=logger))
    assert items == list(range(100))
    assert kept[0].startswith("score pairs: 10/100 (10%)")
    assert [line.split()[2] for line in kept[:-1]] == [f"{n}/100" for n in range(10, 100, 10)]
    assert kept[-1].startswith("score pairs: 100 done in ")
    assert sys.stderr.getvalue() == ""  # no bar drawn


def test_progress_without_total_prints_by_time(monkeypatch, lines):
    logger, kept = lines
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    items = list(progress((n for n in range(5)), desc="batches", every_seconds=0.0, logger=logger))
    assert items == list(range(5))
    assert kept[:5] == [line for line in kept[:5] if line.startswith("batches: ")]
    assert len(kept) == 6 and kept[-1].startswith("batches: 5 done")


def test_progress_on_terminal_draws_a_bar(monkeypatch, lines):
    logger, kept = lines
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress([1, 2, 3], desc="eval", logger=logger)) == [1, 2, 3]
    assert kept == []
    assert "eval" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_datasets_progress_off_terminal_quiets_bars(monkeypatch, lines):
    logger, kept = lines
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not datasets.utils.are_progress_bars_disabled()
    records = datasets.Dataset.from_dict({"x": list(range(20))})
    with datasets_progress("map records", len(records), logger=logger):
        assert datasets.utils.are_progress_bars_disabled()
        records.map(lambda row: {"y": row["x"] * 2}, desc="map records")
    assert not datasets.utils.are_progress_bars_disabled()  # restored
    assert kept[0] == "map records: 20 records ..."
    assert kept[1].startswith("map records: 20 records done in ")
    assert "map records" not in sys.stderr.getvalue()
