"""The failure text of a test's subprocess keeps the stack of a process that died of a signal."""

import os
import subprocess
import sys

from cli_runner import failure_text

# A process that prints a long stderr (as torchrun and a module list do), then aborts in a function.
ABORTING = """
import os, sys
def write_checkpoint():
    os.abort()
sys.stderr.write("noise line\\n" * 2000)
write_checkpoint()
"""


def test_an_aborted_process_shows_its_python_stack_not_only_the_tail():
    environment = dict(os.environ, PYTHONFAULTHANDLER="1")
    result = subprocess.run([sys.executable, "-c", ABORTING], capture_output=True, text=True, env=environment)
    assert result.returncode == -6
    text = failure_text(result)
    assert "Fatal Python error: Aborted" in text
    assert "in write_checkpoint" in text  # the frame that aborted
    assert "noise line" not in text.split("--- end of stderr ---")[0]
    assert "Extension modules" not in text.split("--- end of stderr ---")[0]
