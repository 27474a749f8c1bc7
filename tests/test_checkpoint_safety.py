"""No checkpoint runs code: a trojan `.pth` is refused by every verb that reads one, unless the user trusts it.

The trojan's pickle calls `os.system` to create a marker file; each test asserts the marker never appears.
The verbs run in this process (`rmtrain.cli.main`), which reaches the same code as the command line.
"""

import os
import random
from pathlib import Path

import pytest
import torch

from rmtrain.checkpoints import (
    find_resume_checkpoint,
    is_complete_checkpoint,
    load_checkpoint_file,
    plain_message_hub,
    restore_message_hub,
)
from rmtrain.cli import main
from rmtrain.errors import CheckpointError


class Trojan:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def trojan(tmp_path) -> tuple[Path, Path]:
    """(a checkpoint that runs code when fully unpickled, the marker file it would create)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "iter_5.pth"
    torch.save({"meta": {"iter": 5, "seed": 0, "payload": Trojan(marker)}, "state_dict": {}}, path)
    return path, marker


def _error_lines(capsys) -> list[str]:
    captured = capsys.readouterr()  # main returned 2 (checked by the callers): an RmtrainError, not a crash
    return [line for line in captured.err.splitlines() if line.startswith("rmtrain: error:")]


def test_the_safe_loader_refuses_a_trojan_and_names_what_it_refers_to(trojan):
    path, marker = trojan
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint_file(str(path))
    assert str(path) in str(refused.value) and "system" in str(refused.value)
    assert "--trust-checkpoint" in str(refused.value)
    assert not marker.exists()


def test_trusting_a_file_is_a_full_unpickle(trojan):
    # What the refusal prevents (and what --trust-checkpoint allows): the payload runs.
    path, marker = trojan
    load_checkpoint_file(str(path), trust=True)
    assert marker.exists()


@pytest.mark.parametrize(
    "verb",
    [
        lambda pth, out: ["convert", "pth_to_hf", "tiny_llama_reward_full_demo", str(pth), str(out)],
        lambda pth, out: ["train", "tiny_llama_reward_full_demo", "--work-dir", str(out), "--resume", str(pth)],
    ],
    ids=["convert", "train --resume"],
)
def test_no_verb_runs_a_trojan_checkpoint(trojan, tmp_path, capsys, verb):
    path, marker = trojan
    assert main(verb(path, tmp_path / "out")) == 2
    (line,) = _error_lines(capsys)
    assert str(path) in line and "--trust-checkpoint" in line
    assert not marker.exists()
    assert not (tmp_path / "out" / "iter_1.pth").exists()


def test_eval_does_not_run_a_trojan_checkpoint(trojan, tmp_path, capsys):
    path, marker = trojan
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}\n')
    assert main(["eval", str(path), str(data), "--config", "tiny_llama_reward_full_demo"]) == 2
    (line,) = _error_lines(capsys)
    assert str(path) in line
    assert not marker.exists()


@pytest.mark.parametrize("content", ["empty", "truncated", "random"])
def test_a_broken_checkpoint_is_an_error_naming_it(tmp_path, capsys, content):
    good = tmp_path / "good.pth"
    torch.save({"meta": {"iter": 1}, "state_dict": {"w": torch.ones(64, 64)}}, good)
    data = good.read_bytes()
    path = tmp_path / "iter_1.pth"
    path.write_bytes(
        {"empty": b"", "truncated": data[: len(data) // 2], "random": random.Random(0).randbytes(4096)}[content]
    )
    assert not is_complete_checkpoint(str(path))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint_file(str(path))
    out = tmp_path / "out"
    assert main(["convert", "pth_to_hf", "tiny_llama_reward_full_demo", str(path), str(out)]) == 2
    (line,) = _error_lines(capsys)
    assert str(path) in line and "not a readable checkpoint" in line
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_the_message_hub_is_saved_as_plain_data_and_restored(tmp_path):
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("checkpoint_safety_test")
    for value in (0.5, 0.25, 0.125):
        hub.update_scalar("train/loss", value)
    hub.update_info("eta", __import__("numpy").float64(3.5))
    state = plain_message_hub(hub.state_dict())
    path = tmp_path / "hub.pth"
    torch.save(state, path)
    # Nothing of mmengine's or numpy's is left in the saved form: the weights-only loader reads it as it is.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    restored = restore_message_hub(load_checkpoint_file(str(path)))
    fresh = MessageHub.get_instance("checkpoint_safety_test_restored")
    fresh.load_state_dict(restored)
    assert list(fresh.get_scalar("train/loss").data[0]) == [0.5, 0.25, 0.125]
    assert fresh.get_info("eta") == 3.5


def test_resume_auto_takes_the_newest_complete_checkpoint_whatever_the_pointer_says(tmp_path):
    for step in (4, 8):
        torch.save({"meta": {"iter": step}}, tmp_path / f"iter_{step}.pth")
    (tmp_path / "iter_12.pth").write_bytes(b"")  # a write that never finished (an older rmtrain's)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_4.pth"))  # stale
    assert find_resume_checkpoint("auto", str(tmp_path)) == str(tmp_path / "iter_8.pth")


def test_resume_auto_refuses_to_start_over_when_no_checkpoint_is_usable(tmp_path):
    (tmp_path / "iter_4.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="none is complete"):
        find_resume_checkpoint("auto", str(tmp_path))
    (tmp_path / "iter_4.pth").unlink()
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_4.pth"))  # names a file that is gone
    with pytest.raises(CheckpointError, match="missing"):
        find_resume_checkpoint("auto", str(tmp_path))


def test_resume_auto_starts_afresh_in_an_empty_work_dir_or_one_with_only_a_partial_write(tmp_path):
    assert find_resume_checkpoint("auto", str(tmp_path)) is None
    (tmp_path / "iter_4.pth.tmp").write_bytes(b"half")  # killed during the first save: nothing was complete
    assert find_resume_checkpoint("auto", str(tmp_path)) is None
