"""kill -9 of the whole process group in the middle of a checkpoint write, then `--resume auto`.

With max_keep_ckpts=1 (the SmolLM2 recipe's setting), mmengine's CheckpointHook deletes the previous
checkpoint before writing the next one: killed during that write, a run had nothing to resume from and
`--resume auto` silently started again at iteration 0. rmtrain's saving writes under a temporary name and
deletes the old checkpoint last, so the resumed run continues from the previous checkpoint and ends
with the same weights, bit for bit, as a run that was never killed. Tiny model, few iterations.
"""

import signal
from pathlib import Path

import pytest
import torch

from cli_runner import failure_text, run_rmtrain
from recipe_variants import recipe_variant
from rmtrain.checkpoints import load_checkpoint_file

HERE = Path(__file__).parent
TINY_MODEL = [
    ("hidden_size=128", "hidden_size=32"),
    ("intermediate_size=256", "intermediate_size=64"),
    ("num_hidden_layers=4", "num_hidden_layers=2"),
]
# 32 pairs / 4 per batch = 8 iterations, a checkpoint every 3, only the newest kept.
SETTINGS = dict(num_pairs=32, batch_size=4, max_epochs=1, save_steps=3, save_total_limit=1, log_interval=1)
KILL_HOOK = "\nfrom fault_hooks import KillDuringSaveHook\ncustom_hooks = [dict(type=KillDuringSaveHook, at=6)]\n"


def _train(config: Path, work_dir: Path, *args, nproc: int):
    return run_rmtrain(
        "train", config, "--work-dir", work_dir, *args, cwd=config.parent, nproc=nproc, pythonpath=HERE,
        check=False, timeout=600, new_session=True,
    )  # fmt: skip


def _final_weights(work_dir: Path) -> dict:
    return load_checkpoint_file(str(work_dir / "iter_8.pth"))["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2], ids=["one process", "two processes"])
def test_kill_during_a_checkpoint_write_with_one_kept_resumes_to_identical_weights(tmp_path, nproc):
    variant = dict(replacements=TINY_MODEL, **SETTINGS)
    if nproc == 2:
        variant["batch_size"] = 2  # the same 8 iterations on two ranks
    full = recipe_variant(tmp_path, "full", **variant)
    killed = recipe_variant(tmp_path, "killed", extra=KILL_HOOK, **variant)

    reference = _train(full, tmp_path / "a", nproc=nproc)
    assert reference.returncode == 0, failure_text(reference)

    work = tmp_path / "b"
    crash = _train(killed, work, nproc=nproc)
    assert crash.returncode == -signal.SIGKILL, failure_text(crash)
    # The kill came while iteration 6 was being written: iteration 3's checkpoint is still there and complete.
    assert (work / "iter_3.pth").is_file() and not (work / "iter_6.pth").exists()
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_3.pth")

    resumed = _train(full, work, "--resume", "auto", nproc=nproc)
    assert resumed.returncode == 0, failure_text(resumed)
    assert "resumed epoch: 0, iter: 3" in resumed.stdout + resumed.stderr
    a, b = _final_weights(tmp_path / "a"), _final_weights(work)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sorted(path.name for path in work.glob("iter_*")) == ["iter_8.pth"]  # max_keep_ckpts=1 still holds
