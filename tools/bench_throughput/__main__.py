"""`python -m tools.bench_throughput`: build the shared inputs, run every arm, print and write the tables."""

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from . import __doc__ as package_doc
from .inputs import build_model, build_pairs, build_tokenizer, choose_max_packed_length
from .report import format_table, settings_check, token_check, write_docs
from .running import machine_info, run_arm
from .settings import (
    ALL_ARMS,
    ARM_TITLES,
    ARMS,
    DATASETS,
    DEFAULT_DATA_ROOT,
    EXTRA_ARMS,
    MODEL_SIZES,
    REPO_ROOT,
    REWARD_TOKEN,
    SEED,
)
from .window import expected_window_digest, window_batches


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=package_doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=None, help="model sizes: 10m,100m (default both; --smoke: tiny)")
    parser.add_argument("--datasets", default="hh,ultrafeedback", help="data sets: hh,ultrafeedback")
    parser.add_argument(
        "--arms", default=",".join(ARMS), help=f"arms to run (default: {','.join(ARMS)}; also: {','.join(EXTRA_ARMS)})"
    )
    parser.add_argument("--steps", type=int, default=None, help="measured optimizer steps (default 20; --smoke: 3)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="optimizer steps before the window (default 3; --smoke: 1)"
    )
    parser.add_argument(
        "--pairs-per-step", type=int, default=None, help="P pairs per optimizer step (default 8; --smoke: 2)"
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="max tokens per sequence (default 1024; --smoke: 128)"
    )
    parser.add_argument("--order", default="grouped", choices=("grouped", "random"),
                        help="the window's batches: grouped (rmtrain's length-grouped batching, default) or random; "
                        "every arm trains the same batches in the same order")  # fmt: skip
    parser.add_argument("--vocab-size", type=int, default=32000, help="BPE vocabulary size (default 32000)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                        help="auto: bf16 autocast where the CPU supports it (rmtrain.engine.precision)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every arm (default 2)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, few steps: a quick check that every arm runs")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "work_dirs" / "bench_throughput"))
    parser.add_argument(
        "--arm-timeout", type=float, default=None, help="seconds before an arm is stopped (default none)"
    )
    parser.add_argument("--profile-step", type=int, default=None,
                        help="rmtrain arms: write torch.profiler's table of this optimizer step to <run dir>/profile.txt "
                        "(the profiler slows that step: use it apart from measuring runs)")  # fmt: skip
    parser.add_argument("--from-results", default=None,
                        help="write --docs-path from saved results.json files (comma-separated, in order) instead "
                        "of running: for a benchmark run in parts")  # fmt: skip
    parser.add_argument("--write-docs", action="store_true", help="write the tables to --docs-path")
    parser.add_argument("--docs-path", default=str(REPO_ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = dict(sizes="tiny" if smoke else "10m,100m", steps=3 if smoke else 20, warmup=1 if smoke else 3,
                    pairs_per_step=2 if smoke else 8, max_length=128 if smoke else 1024)  # fmt: skip
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    args.datasets = [d.strip().lower() for d in args.datasets.split(",") if d.strip()]
    args.arms = [a.strip().lower() for a in args.arms.split(",") if a.strip()]
    args.arms = sorted(set(args.arms), key=lambda a: ALL_ARMS.index(a) if a in ALL_ARMS else -1)
    for name, values, known in (
        ("size", args.sizes, MODEL_SIZES),
        ("dataset", args.datasets, DATASETS),
        ("arm", args.arms, ALL_ARMS),
    ):
        unknown = [v for v in values if v not in known]
        if unknown:
            parser.error(f"unknown {name} {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the window starts at the end of a warm-up step)")
    return args


def docs_from_results(files: list[str], docs_path: Path) -> None:
    """docs/benchmarks.md from runs made in parts: their results in order, each run's command listed."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    all_results = [dict(entry, order=run["settings"]["order"]) for run in runs for entry in run["results"]]
    commands = "\n".join(dict.fromkeys(run["command"] for run in runs))
    write_docs(docs_path, all_results, runs[0]["info"], runs[0]["settings"], commands)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_results:
        docs_from_results(args.from_results.split(","), Path(args.docs_path))
        print(f"wrote {args.docs_path}")
        return 0
    from rmtrain.engine.precision import bf16_supported

    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and bf16_supported("cpu"))
    precision = "bf16 autocast (fp32 weights)" if bf16 else "fp32"
    data_root = Path(args.data_root)
    work_dir = Path(args.work_dir)
    cache_dir = work_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m tools.bench_throughput " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"bench_throughput: sizes {args.sizes}, data sets {args.datasets}, arms {args.arms}, P={args.pairs_per_step}, "
          f"max_length={args.max_length}, warm-up {args.warmup} + {args.steps} measured steps, {precision}, "
          f"{args.threads} threads", flush=True)  # fmt: skip

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: other processes share the CPU, so the "
              f"timings will be slow and noisy. Run the benchmark on an otherwise idle machine.", flush=True)  # fmt: skip
    tokenizer_dir = build_tokenizer(data_root, args.vocab_size, cache_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    reward_token_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)

    all_results = []
    for dataset in args.datasets:
        data_file = data_root / DATASETS[dataset]["file"]
        pairs_dir, ref = build_pairs(data_file, DATASETS[dataset]["map_fn"], tokenizer_dir, args.max_length, cache_dir)
        max_packed_length, bin_pairs = choose_max_packed_length(ref["lengths"], args.pairs_per_step, args.max_length)
        # TRL drops pairs longer than max_length; count them in the untruncated tokenisation.
        _, full = build_pairs(data_file, DATASETS[dataset]["map_fn"], tokenizer_dir, 1 << 20, cache_dir)
        ref["over_length_pairs"] = sum(max(c, r) > args.max_length for c, r in full["lengths"])
        window = window_batches(ref["lengths"], args.pairs_per_step, args.warmup + args.steps, args.order, SEED)
        window_file = work_dir / f"window-{dataset}.json"
        window_file.write_text(json.dumps(window))
        import datasets

        ref["window_digest"] = expected_window_digest(datasets.load_from_disk(str(pairs_dir)), window, args.warmup)
        measured = [i for step in window[args.warmup :] for i in step]
        ref["window_pairs"] = len(measured)
        ref["window_tokens"] = sum(sum(ref["lengths"][i]) for i in measured)
        for size in args.sizes:
            model_dir, params = build_model(size, tokenizer_dir, args.max_length, cache_dir)
            print(f"\n== {size} ({params / 1e6:.1f}M parameters), {dataset}: {ref['pairs']} pairs, {ref['tokens']:,} "
                  f"tokens, max_packed_length {max_packed_length} ({bin_pairs:.2f} pairs per bin)", flush=True)  # fmt: skip
            results = {}
            for arm in args.arms:
                spec = dict(
                    arm=arm, size=size, dataset=dataset, run_dir=str(work_dir / "runs" / f"{size}-{dataset}-{arm}"),
                    model_dir=str(model_dir), tokenizer_dir=str(tokenizer_dir), data_file=str(data_file),
                    map_fn=DATASETS[dataset]["map_fn"], pairs_dir=str(pairs_dir), reward_token_id=reward_token_id,
                    pad_token_id=tokenizer.pad_token_id, max_length=args.max_length,
                    max_packed_length=max_packed_length, pairs_per_step=args.pairs_per_step, warmup=args.warmup,
                    steps=args.steps, lr=args.lr, betas=[0.9, 0.999], weight_decay=0.0, max_norm=1.0,
                    dtype=args.dtype, bf16=bf16, threads=args.threads, profile_step=args.profile_step,
                    window_file=str(window_file),
                )  # fmt: skip
                print(f"   {ARM_TITLES[arm]} ...", end=" ", flush=True)
                result = run_arm(spec, args.arm_timeout)
                results[arm] = result
                if result.get("ok"):
                    print(f"{result['tokens_per_s']:,.0f} tokens/s, {result['step_s']:.2f} s/step "
                          f"({result['wall_s']:.0f}s in all)", flush=True)  # fmt: skip
                else:
                    print(
                        f"FAILED ({result['wall_s']:.0f}s): {result['error']}\n      log: {spec['run_dir']}/stderr.log",
                        flush=True,
                    )
            check = token_check(results, ref)
            read_back = settings_check(results)
            entry = dict(size=size, dataset=dataset, params=params, pairs=ref["pairs"], tokens=ref["tokens"],
                         truncated=ref["truncated"], over_length_pairs=ref["over_length_pairs"],
                         untruncated_pairs=full["pairs"], window_pairs=ref["window_pairs"],
                         window_tokens=ref["window_tokens"],
                         max_packed_length=max_packed_length, bin_pairs=bin_pairs, results=results, token_check=check,
                         settings_check=read_back)  # fmt: skip
            all_results.append(entry)
            print()
            print(f"{size} model, {dataset}: P={args.pairs_per_step}, max_length={args.max_length}, "
                  f"max_packed_length={max_packed_length}")  # fmt: skip
            print("\n".join(format_table(results, markdown=False)))
            print(check)
            print(read_back, flush=True)

    info = machine_info(precision, args.threads)
    settings = dict(vocab_size=len(tokenizer), max_length=args.max_length, lr=args.lr, warmup=args.warmup,
                    steps=args.steps, pairs_per_step=args.pairs_per_step, order=args.order)  # fmt: skip
    (work_dir / "results.json").write_text(
        json.dumps(dict(info=info, settings=settings, command=command, results=all_results), indent=1)
    )
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, transformers {info['transformers']}, "
          f"trl {info['trl']}, {precision}; results: {work_dir / 'results.json'}")  # fmt: skip
    if args.write_docs:
        write_docs(Path(args.docs_path), all_results, info, settings, command)
        print(f"wrote {args.docs_path}")
    failed = [
        f"{e['size']}/{e['dataset']}/{arm}" for e in all_results for arm, r in e["results"].items() if not r.get("ok")
    ]
    if failed:
        print(f"failed arms: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
