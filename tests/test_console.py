"""The console of a training run, `rmtrain --version`, and a closed pipe (`rmtrain list-cfg | head`)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import run_rmtrain
from recipe_variants import recipe_variant
from rmtrain import cli

SNAPSHOT = Path(__file__).parent / "snapshots" / "tiny_demo_console.txt"


def normalise_console(text: str, folder: Path) -> str:
    """Timestamps, numbers and the test's folder replaced, so that only the console's lines and words remain."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^\d\d/\d\d \d\d:\d\d:\d\d - mmengine - ", "", line)
        line = line.replace(str(folder), "<tmp>")
        # the machine's: cpu or cuda, bf16 autocast where the device has it
        line = re.sub(r"device \w+; precision [^;]+;", "device D; precision P;", line)
        line = re.sub(r"-?\d+(\.\d+)?(e[-+]\d+)?", "N", line)  # scores may be negative
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_version_names_rmtrain_and_its_libraries(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["rmtrain", "torch", "transformers", "mmengine", "deepspeed"]


def test_a_closed_pipe_ends_quietly():
    # `true` exits without reading: the output meets a closed pipe, as with `| head -3` on a long listing.
    command = f"{sys.executable} -m rmtrain.cli list-cfg | true; echo $? ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["0", "0"]
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


@pytest.mark.slow  # trains in a subprocess
def test_tiny_demo_console_shows_what_the_user_needs_and_the_log_file_keeps_everything(tmp_path):
    # The tiny demo's default run, shortened (64 pairs, 4 iterations): the same lines, fewer of them.
    config = recipe_variant(tmp_path, "tiny_demo", num_pairs=64, max_epochs=1, save_steps=4, log_interval=2)
    result = run_rmtrain("train", config, "--work-dir", tmp_path / "work", cwd=tmp_path)
    console = normalise_console(result.stdout, tmp_path)
    # On a deliberate change of the console, write the new normalised output to the snapshot file and review it.
    assert console == SNAPSHOT.read_text()
    assert "Setting accelerator" not in result.stdout + result.stderr
    (log,) = (tmp_path / "work").glob("*/*.log")
    text = log.read_text()
    for kept in (
        "System environment",
        "Config:",
        "Hooks will be executed in the following order",
        "preference data from",
    ):
        assert kept in text, kept


@pytest.mark.slow  # starts the command line in subprocesses
@pytest.mark.parametrize("verb", [["check-data", "tiny_llama_reward_full_demo"], ["list-cfg"]])
def test_no_deepspeed_notice_at_other_verbs(verb, tmp_path):
    # `train` is checked by the console snapshot above; these verbs must stay free of it too.
    result = run_rmtrain(*verb, cwd=tmp_path)
    assert "Setting accelerator" not in result.stdout + result.stderr
