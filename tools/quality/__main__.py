"""Reward-model quality, rmtrain against TRL's RewardTrainer at the same budget (see docs/quality.md).

    python -m tools.quality --suite generated --seeds 0,1,2 --variants recipe [--write-docs]
    python -m tools.quality --suite generated --seeds 0 --variants head_zeros,head_normal,last_token
    python -m tools.quality --suite real --seeds 0 --variants recipe --write-docs

Each (suite, arm, settings, seed) trains once: results are cached in work_dirs/quality/results.json
(keyed by the effective settings, so a repeated or interrupted command skips finished arms and two
variant names with the same settings share a run). --no-trl skips the TRL arm, --report only prints.
Run it on one core with nothing else on it for timings (OMP_NUM_THREADS=1, taskset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tools.quality import arms, report
from tools.quality.variants import VARIANTS, effective_settings, variant_options

REPO_ROOT = Path(__file__).resolve().parents[2]
WORK_DIR = REPO_ROOT / "work_dirs" / "quality"
DOC = REPO_ROOT / "docs" / "quality.md"


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def save_results(path: Path, results: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)  # never a half-written cache


def run_key(suite: str, arm: str, seed: int, settings: dict | None) -> str:
    return json.dumps([suite, arm, seed, settings], sort_keys=True)


def name_rows_by_settings(results: list[dict], suite: str) -> None:
    """Label each rmtrain row of `suite` with every variant that trains its settings as VARIANTS and the recipe
    define them now (the settings are in the row's key), so a change of the recipe moves the name "recipe"
    to the runs it now means. A row no variant matches any more keeps the names it was run under."""
    settings_of = {name: effective_settings(arms.recipe_config(suite, variant_options(name))) for name in VARIANTS}
    for row in results:
        if row["suite"] == suite and row["arm"] == "rmtrain":
            settings = json.loads(row["key"])[3]
            row["variants"] = [name for name, s in settings_of.items() if s == settings] or row["variants"]


def find(results: list[dict], key: str) -> dict | None:
    return next((row for row in results if row["key"] == key), None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=("generated", "real"), required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="recipe", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--no-trl", action="store_true", help="run only the rmtrain arms")
    parser.add_argument("--report", action="store_true", help="train nothing; print (and --write-docs) the tables")
    parser.add_argument("--write-docs", action="store_true", help=f"replace this suite's block in {DOC.name}")
    parser.add_argument("--results", default=str(WORK_DIR / "results.json"))
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    variants = args.variants.split(",")
    results_path = Path(args.results)
    results = load_results(results_path)

    plan = []
    for seed in seeds:
        if not args.no_trl:
            plan.append(("trl", None, seed))
        plan += [("rmtrain", variant, seed) for variant in variants]
    for arm, variant, seed in plan if not args.report else []:
        settings = None
        if arm == "rmtrain":
            cfg = arms.recipe_config(args.suite, {**variant_options(variant), "train_dataloader.sampler.seed": seed})
            settings = effective_settings(cfg)
        key = run_key(args.suite, arm, seed, settings)
        done = find(results, key)
        label = f"{args.suite} {arm} {variant or ''} seed {seed}"
        if done is not None:
            print(f"cached: {label}", flush=True)
            continue
        run_dir = str(WORK_DIR / "runs" / f"{args.suite}_{arm}_{variant or 'trl'}_seed{seed}")
        print(f"running: {label} in {run_dir}", flush=True)
        started = time.perf_counter()
        if arm == "trl":
            outcome = arms.run_trl(args.suite, seed, run_dir)
        else:
            outcome = arms.run_rmtrain(args.suite, variant, seed, run_dir)
        outcome["harness_s"] = time.perf_counter() - started
        row = {"key": key, "suite": args.suite, "arm": arm, "seed": seed, "variants": [variant or "trl"], **outcome}
        results = load_results(results_path) + [row]
        save_results(results_path, results)
        summary = ", ".join(
            f"{name} {m['accuracy']:.3f} (std {m['score_std']:.2f})" for name, m in row["metrics"].items()
        )
        print(f"done: {label}: {summary}; {row['train']['step_s']:.2f} s/step, {row['harness_s']:.0f} s", flush=True)

    name_rows_by_settings(results, args.suite)
    listed = [v for v in VARIANTS if any(v in row["variants"] for row in results if row["suite"] == args.suite)]
    lines = report.suite_tables(results, args.suite, listed)
    print("\n".join(lines))
    if args.write_docs:
        text = DOC.read_text() if DOC.exists() else ""
        DOC.write_text(report.replace_block(text, args.suite, "\n".join(lines)))
        print(f"wrote the {args.suite} block of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
