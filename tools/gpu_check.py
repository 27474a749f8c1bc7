"""A first run on one GPU: train, validate, convert and evaluate, padded and packed, SDPA and flash-attn.

    python3 tools/gpu_check.py [--out DIR] [--pairs 256] [--models tiny,llama_1b] [--cpu]

For each model (the tiny demo recipe, and a ~1B random-initialised Llama: hidden 2048, 22 layers, 32
heads, 4 key/value heads, intermediate 5632) and each variant (padded with SDPA, padded with
flash_attention_2 when flash-attn is installed, packed rows through rmtrain's packed attention), it
runs `rmtrain train` (the demo data, validation at the end), `rmtrain convert pth_to_hf` on the last
checkpoint (with its score verification) and `rmtrain eval` on freshly generated pairs, each in its own
process, and prints one line per step: OK or FAILED, the seconds it took, and its figures (last
training loss, validation accuracy, peak GPU memory from the log, the export's largest score
difference, the evaluation accuracy). It ends with a summary and exits 1 if any step failed.

`--cpu` runs the same steps on the CPU (the tiny model only unless --models says otherwise): a check
of the script itself where no GPU is available.
"""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # recipe_variant: a shipped recipe with settings replaced

MODELS = {
    "tiny": [],
    "llama_1b": [
        ("hidden_size=128", "hidden_size=2048"),
        ("intermediate_size=256", "intermediate_size=5632"),
        ("num_hidden_layers=4", "num_hidden_layers=22"),
        ("num_attention_heads=4", "num_attention_heads=32"),
        ("num_key_value_heads=2", "num_key_value_heads=4"),
    ],
}


def _variants(flash_installed: bool) -> list[tuple[str, dict, list[str]]]:
    """(name, recipe settings, --cfg-options) for each attention variant."""
    variants = [("padded_sdpa", dict(use_varlen_attn=False), [])]
    if flash_installed:
        options = ["model.llm.config.attn_implementation=flash_attention_2"]
        variants.append(("padded_flash_attention_2", dict(use_varlen_attn=False), options))
    variants.append(("packed", dict(use_varlen_attn=True), []))
    return variants


def _run(args: list[str], cwd: Path, log: Path, timeout: float) -> tuple[bool, float, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.time()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "rmtrain.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        output, ok = result.stdout + result.stderr, result.returncode == 0
    except subprocess.TimeoutExpired as error:
        output, ok = f"{error.stdout or ''}{error.stderr or ''}\ntimed out after {timeout:.0f} s", False
    log.write_text(output)
    return ok, time.time() - start, output


def _train_figures(work_dir: Path, output: str) -> str:
    rows = []
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json")):
        rows += [json.loads(line) for line in scalars.read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    accuracy = [row["val/accuracy"] for row in rows if "val/accuracy" in row]
    memory = [int(value) for value in re.findall(r"memory: (\d+)", output)]
    parts = [f"{len(losses)} logged iterations"]
    if losses:
        parts.append(f"last loss {losses[-1]:.4f}")
    if accuracy:
        parts.append(f"val/accuracy {accuracy[-1]:.3f}")
    if memory:
        parts.append(f"peak memory {max(memory)} MB")
    return ", ".join(parts)


def _last_checkpoint(work_dir: Path) -> Path | None:
    pointer = work_dir / "last_checkpoint"
    return Path(pointer.read_text().strip()) if pointer.is_file() else None


def _convert_figures(output: str) -> str:
    match = re.search(r"scores \d+ conversations within (\S+) of the training model", output)
    return f"verified, largest score difference {match.group(1)}" if match else "no verification line"


def _eval_figures(out: Path) -> str:
    summary = out.with_suffix(".summary.json")
    if not summary.is_file():
        return "no summary"
    data = json.loads(summary.read_text())
    return f"accuracy {data['accuracy']:.3f} on {data['pairs']} pairs, {data.get('dtype', '?')} on {data.get('device', '?')}"


def _eval_data(path: Path, pairs: int) -> None:
    from rmtrain.data import build_demo_preference_data

    build_demo_preference_data(num_pairs=pairs, seed=12345).to_json(str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check_runs", help="folder for configs, work dirs, exports and logs")
    parser.add_argument("--pairs", type=int, default=256, help="training pairs per run (default 256)")
    parser.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a check of this script)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per step (default 300)")
    args = parser.parse_args()

    import torch

    from recipe_variants import recipe_variant
    from rmtrain.model.packed_attention import packed_attention_kernel

    if not args.cpu and not torch.cuda.is_available():
        print("no GPU visible: run on a GPU machine, or pass --cpu to check the script on the CPU")
        return 2
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        device = "cpu"
    else:
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
    flash_installed = importlib.util.find_spec("flash_attn") is not None
    packed_kernel = packed_attention_kernel(torch.device("cpu" if args.cpu else "cuda:0"), torch.bfloat16)
    print(f"device: {device}; torch {torch.__version__}; flash-attn installed: {flash_installed}")
    print(f"packed rows in bf16 use: {packed_kernel}")

    models = args.models.split(",") if args.models else (["tiny"] if args.cpu else list(MODELS))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    eval_data = out / "eval_pairs.jsonl"
    _eval_data(eval_data, 64)

    results = []
    for model in models:
        for variant, settings, options in _variants(flash_installed and not args.cpu):
            name = f"{model}_{variant}"
            folder = out / name
            folder.mkdir(exist_ok=True)
            config = recipe_variant(
                folder, name, replacements=MODELS[model], num_pairs=args.pairs, batch_size=8, max_epochs=1,
                save_steps=10**6, log_interval=5, **settings,
            )  # fmt: skip
            work = folder / "work"
            train_args = ["train", str(config), "--work-dir", str(work), "--seed", "0"]
            if options:
                train_args += ["--cfg-options", *options]
            ok, seconds, output = _run(train_args, folder, folder / "train.log", args.timeout)
            figures = _train_figures(work, output) if ok else output.strip().splitlines()[-1:]
            results.append((name, "train", ok, seconds, figures))
            print(f"{name:<34} train    {'OK' if ok else 'FAILED':<6} {seconds:6.1f} s  {figures}", flush=True)
            checkpoint = _last_checkpoint(work) if ok else None
            if checkpoint is None:
                continue
            export = folder / "hf"
            convert_args = ["convert", "pth_to_hf", str(config), str(checkpoint), str(export), "--overwrite"]
            ok, seconds, output = _run(convert_args, folder, folder / "convert.log", args.timeout)
            figures = _convert_figures(output) if ok else output.strip().splitlines()[-1:]
            results.append((name, "convert", ok, seconds, figures))
            print(f"{name:<34} convert  {'OK' if ok else 'FAILED':<6} {seconds:6.1f} s  {figures}", flush=True)
            if not ok:
                continue
            scores = folder / "eval_scores.jsonl"
            eval_args = ["eval", str(export), str(eval_data), "--out", str(scores)]
            ok, seconds, output = _run(eval_args, folder, folder / "eval.log", args.timeout)
            figures = _eval_figures(scores) if ok else output.strip().splitlines()[-1:]
            results.append((name, "eval", ok, seconds, figures))
            print(f"{name:<34} eval     {'OK' if ok else 'FAILED':<6} {seconds:6.1f} s  {figures}", flush=True)

    failed = [(name, step) for name, step, ok, _, _ in results if not ok]
    print(f"\n{len(results) - len(failed)} of {len(results)} steps passed; logs under {out}")
    for name, step in failed:
        print(f"FAILED: {name} {step} (see {out / name / (step + '.log')})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
