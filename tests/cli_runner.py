"""Test helper: run the `rmtrain` command line in a fresh process, the one way every test does it."""

import os
import subprocess
import sys
from pathlib import Path

# Launcher variables of an outer job would turn a test's one-process run into a torchrun job.
_LAUNCH_VARIABLES = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "ADDR", "PORT")


def run_rmtrain(
    *args, cwd, nproc: int = 1, pythonpath=(), env=None, check: bool = True, timeout: float = 900, new_session=False
):
    """`rmtrain ARGS` in a fresh process (`python -m rmtrain.cli`); returns the CompletedProcess.

    nproc > 1 sets NPROC_PER_NODE (torchrun). `pythonpath`: folders put in front of PYTHONPATH (for
    map functions or hooks that a test's config imports). `env`: extra variables. Collectives time
    out after 2 minutes, so a broken multi-process test fails instead of hanging; a process that dies
    of a signal prints its Python stacks (faulthandler). check=True raises
    with the end of stderr when the command fails. new_session: the command gets its own process group
    (one a test may kill whole).
    """
    environment = {key: value for key, value in os.environ.items() if key not in _LAUNCH_VARIABLES}
    environment["RMTRAIN_DIST_TIMEOUT_MINUTES"] = "2"
    # A process killed by a signal (a C++ abort in gloo, a segfault) prints its Python stacks first.
    environment["PYTHONFAULTHANDLER"] = "1"
    if nproc > 1:
        environment["NPROC_PER_NODE"] = str(nproc)
    folders = [str(folder) for folder in ([pythonpath] if isinstance(pythonpath, (str, Path)) else pythonpath)]
    environment["PYTHONPATH"] = os.pathsep.join(folders + [os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    environment.update(env or {})
    command = [sys.executable, "-m", "rmtrain.cli", *map(str, args)]
    result = subprocess.run(
        command,
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=new_session,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"rmtrain {' '.join(map(str, args))} failed ({result.returncode}):\n"
            f"{result.stdout[-1000:]}\n{failure_text(result)}"
        )
    return result


# What a rank prints when it fails: a Python exception, a C++ one that aborts it (gloo's
# "terminate called after throwing ... what(): [enforce fail ...]", glibc's "free(): ..."), or the
# stacks faulthandler prints for a rank killed by a signal.
_FAILURE_MARKS = (
    "Error", "Exception", "terminate called", "what()", "Fatal Python error", 'File "', "Thread 0x",
    "Current thread", "free()", "malloc", "Aborted", "Segmentation",
)  # fmt: skip
# torchrun's own report repeats what the ranks printed; faulthandler's module list says nothing.
_NOISE = ("elastic", "ChildFailed", "Extension modules")


def failure_text(result, errors: int = 60, tail: int = 15) -> str:
    """The lines of a failed run's stderr that name an error or a stack, then the end of its output.

    A bare tail is not enough for a multi-process run: a rank's stack is followed by torchrun's
    report and a module list of several thousand characters.
    """
    lines = result.stderr.splitlines()
    named = [
        line for line in lines
        if any(mark in line for mark in _FAILURE_MARKS) and not any(noise in line for noise in _NOISE)
    ]  # fmt: skip
    return "\n".join(named[-errors:] + ["--- end of stderr ---"] + lines[-tail:])
