"""Memory and speed of full, LoRA and QLoRA training of the SmolLM2-135M-Instruct demo, and checkpoint sizes.

Each mode trains the same pairs for the same number of steps, one run each, in its own process:

  full   smollm2_135m_instruct_reward_full_demo (every weight trained, fp32 master weights)
  lora   smollm2_135m_instruct_reward_lora_demo (frozen trunk, LoRA r=16 on q/k/v/o/gate/up/down, head in full)
  qlora  the LoRA demo with the trunk loaded in 4 bits (nf4, double quantisation, bitsandbytes)

Measured per mode: peak resident memory of the training process (VmHWM from /proc, model, optimizer and
activations included), real tokens per second (the logged `num_tokens`, which counts no padding,
over the logged iteration times, the first iteration left out as warm-up), and the size of the
checkpoint written at the last step (model part and optimizer state included). Ratios are against full.

    python3 tools/bench_lora.py                  # 12 steps of 8 pairs per mode
    python3 tools/bench_lora.py --steps 6 --modes full lora

On a machine shared with other work the speed figures vary; the report prints the torch threads and
the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {
    "full": "smollm2_135m_instruct_reward_full_demo",
    "lora": "smollm2_135m_instruct_reward_lora_demo",
    "qlora": "smollm2_135m_instruct_reward_lora_demo",
}
QLORA_TRUNK = """        attn_implementation="sdpa",
        quantization_config=dict(
            type=BitsAndBytesConfig, load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True
        ),
    ),"""

# Runs in the training process: train, then report that process's peak memory.
CHILD = """
import json, sys
from rmtrain.engine.train import train
train(sys.argv[1], work_dir=sys.argv[2], seed=0)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("BENCH " + json.dumps({"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}))
"""


def variant(mode: str, folder: Path, pairs: int, batch_size: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from rmtrain.recipes import resolve_config

    text = Path(resolve_config(RECIPES[mode])).read_text()
    steps = pairs // batch_size
    settings = dict(
        num_pairs=pairs, batch_size=batch_size, max_epochs=1, save_steps=steps, log_interval=1, val_interval=10**6
    )
    for key, value in settings.items():
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", text, count=1, flags=re.M)
        assert count == 1, (mode, key)
    if mode == "qlora":
        text = text.replace('        attn_implementation="sdpa",\n    ),', QLORA_TRUNK, 1)
        text = text.replace(
            "from peft import LoraConfig", "from peft import LoraConfig\nfrom transformers import BitsAndBytesConfig"
        )
        assert "quantization_config" in text
    path = folder / f"bench_{mode}.py"
    path.write_text(text)
    return path


def run(mode: str, folder: Path, pairs: int, batch_size: int) -> dict:
    config = variant(mode, folder, pairs, batch_size)
    work_dir = folder / mode
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), str(work_dir)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"{mode} training failed:\n{result.stderr[-4000:]}")
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    measured = json.loads(line[len("BENCH ") :])
    scalars = sorted(work_dir.glob("*/vis_data/scalars.json"))[-1]
    rows = [row for row in map(json.loads, scalars.read_text().splitlines()) if "num_tokens" in row]
    timed = rows[1:]  # the first iteration warms up
    measured["tokens_per_s"] = sum(row["num_tokens"] for row in timed) / sum(row["time"] for row in timed)
    measured["iterations"] = len(rows)
    measured["first_loss"], measured["last_loss"] = rows[0]["loss"], rows[-1]["loss"]
    (checkpoint,) = work_dir.glob(f"iter_{len(rows)}.pth")
    measured["checkpoint_mb"] = checkpoint.stat().st_size / 2**20
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--modes", nargs="+", default=["full", "lora", "qlora"], choices=list(RECIPES))
    args = parser.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            results[mode] = run(mode, Path(tmp), args.steps * args.batch_size, args.batch_size)
            print(mode, json.dumps(results[mode]), flush=True)
    base = results.get("full")
    print(f"\nSmolLM2-135M-Instruct demo, {args.steps} steps of {args.batch_size} pairs, max_length 96\n")
    print("| mode | peak RSS (MB) | real tokens/s | checkpoint (MB) | loss first -> last |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        ratio = (
            f" ({r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x)",
            f" ({r['tokens_per_s'] / base['tokens_per_s']:.2f}x)",
            f" ({r['checkpoint_mb'] / base['checkpoint_mb']:.3f}x)",
        ) if base and mode != "full" else ("", "", "")  # fmt: skip
        print(
            f"| {mode} | {r['peak_rss_mb']:.0f}{ratio[0]} | {r['tokens_per_s']:.0f}{ratio[1]} | "
            f"{r['checkpoint_mb']:.1f}{ratio[2]} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |"
        )


if __name__ == "__main__":
    main()
