"""Does `torch.compile` of the trunk pay for training on this CPU? Eager against compiled, same batches.

    python tools/bench_compile.py --threads 1 [--modes padded,packed] [--datasets hh]

Two copies of the benchmark's 10m Llama reward model (tools/bench_throughput, the same weights), one with
its trunk wrapped in `torch.compile(dynamic=True)` (length-grouped batches change shape every step, so a
static compile would recompile per shape). Both train the same --batches length-grouped batches of --pairs
pairs (rmtrain's LengthGroupedSampler, seed 0), alternately: forward, backward and AdamW step under bf16
autocast. Printed per mode: the compiled arm's first step (the compile), how many later batches recompiled
(a first step slower than 3x the eager one), and eager / compiled time over the steady steps (the fastest
of --repeats per batch, then the median over batches; above 1: compiled is faster). The compile time is
what a run pays once; the steady ratio is what it gets back per step.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_batching_mode import (  # noqa: E402  (after the path is set)
    add_batch_options,
    bench_inputs,
    bench_pairs,
    bench_reward_model,
    length_grouped_batches,
    timed_step,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="hh")
    parser.add_argument("--modes", default="padded,packed")
    add_batch_options(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rmtrain.data import preference_collate_fn

    tokenizer_dir, cache, data_root = bench_inputs()

    def build(mode: str, compiled: bool):
        model, optimizer = bench_reward_model(mode)
        if compiled:
            model.model = torch.compile(model.model, dynamic=True)
        return model, optimizer

    def step(arm, data: dict) -> float:
        return timed_step(*arm, data)

    print(f"torch {torch.__version__}, {args.threads} thread(s), 10m model, {args.pairs} pairs per batch")
    print(f"{'data':14s} {'mode':7s} {'compile s':>9s} {'recompiled':>10s} {'eager/compiled':>15s}  per batch")
    for name in args.datasets.split(","):
        pairs = bench_pairs(name, tokenizer_dir, cache, data_root)
        batches = length_grouped_batches(pairs, args.pairs, args.batches)
        for mode in args.modes.split(","):
            arms = {"eager": build(mode, False), "compiled": build(mode, True)}
            ratios, first_steps, recompiled = [], [], 0
            for index, batch in enumerate(batches):
                data = (
                    preference_collate_fn(batch, pad_token_id=0) if mode == "padded" else preference_collate_fn([batch])
                )["data"]
                eager_first = step(arms["eager"], data)
                compiled_first = step(arms["compiled"], data)  # compiles (or recompiles) on a new shape
                first_steps.append(compiled_first)
                recompiled += index > 0 and compiled_first > 3 * eager_first
                times = {"eager": [], "compiled": []}
                for _ in range(args.repeats):
                    for arm_name, arm in arms.items():
                        times[arm_name].append(step(arm, data))
                ratios.append(min(times["eager"]) / min(times["compiled"]))
            print(f"{name:14s} {mode:7s} {first_steps[0]:9.1f} {recompiled:>10d} {statistics.median(ratios):15.2f}  "
                  + " ".join(f"{r:.2f}" for r in ratios), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
