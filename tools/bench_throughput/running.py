"""Running one arm in its own subprocess, and what the machine is."""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .settings import REPO_ROOT


def run_arm(spec: dict, timeout: float | None) -> dict:
    """Run one arm in a fresh process (its peak RSS is its own) and read back its result.json."""
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").unlink(missing_ok=True)
    spec_path = run_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    threads = str(spec["threads"])
    env = dict(
        os.environ,
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_DISABLED="true",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    load_before = os.getloadavg()[0]
    start = time.time()
    with open(run_dir / "stdout.log", "w") as out, open(run_dir / "stderr.log", "w") as err:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "tools.bench_throughput.arms", str(spec_path)],
                cwd=str(REPO_ROOT), env=env, stdout=out, stderr=err, timeout=timeout, check=False,
            )  # fmt: skip
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    wall = time.time() - start
    result_path = run_dir / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
    else:
        why = f"timed out after {timeout:.0f}s" if returncode is None else f"exited with code {returncode}, no result"
        tail = (run_dir / "stderr.log").read_text(errors="replace").strip().splitlines()[-3:]
        result = {"ok": False, "error": why + (f": {' | '.join(tail)}" if tail else "")}
    result["wall_s"] = wall
    result["load_before"] = load_before
    return result


def machine_info(dtype_label: str, threads: int) -> dict:
    import mmengine
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
        "mmengine": mmengine.__version__,
        "precision": dtype_label,
    }
