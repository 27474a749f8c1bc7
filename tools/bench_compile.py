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
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_batching_mode import bench_pairs  # noqa: E402  (after the path is set)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="hh")
    parser.add_argument("--modes", default="padded,packed")
    parser.add_argument("--pairs", type=int, default=8, help="pairs per batch (default 8)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import LlamaConfig, LlamaModel

    from rmtrain.data import preference_collate_fn
    from rmtrain.data.packing import LengthGroupedSampler
    from rmtrain.model import RewardModel
    from tools.bench_throughput.inputs import build_tokenizer
    from tools.bench_throughput.settings import DEFAULT_DATA_ROOT, MODEL_SIZES

    cache = ROOT / "work_dirs" / "bench_throughput" / "cache"
    data_root = Path(DEFAULT_DATA_ROOT)
    tokenizer_dir = build_tokenizer(data_root, 32000, cache)
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=1024, use_cache=False, **MODEL_SIZES["10m"])

    def build(mode: str, compiled: bool):
        torch.manual_seed(0)
        trunk = LlamaModel(config)
        trunk.config._attn_implementation = "sdpa"
        model = RewardModel(trunk, use_varlen_attn=mode == "packed", use_activation_checkpointing=False).train()
        if compiled:
            model.model = torch.compile(model.model, dynamic=True)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(arm, data: dict) -> float:
        model, optimizer = arm
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(data, mode="loss")["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    print(f"torch {torch.__version__}, {args.threads} thread(s), 10m model, {args.pairs} pairs per batch")
    print(f"{'data':14s} {'mode':7s} {'compile s':>9s} {'recompiled':>10s} {'eager/compiled':>15s}  per batch")
    for name in args.datasets.split(","):
        pairs = bench_pairs(name, tokenizer_dir, cache, data_root)

        class Lengths:  # what the sampler reads
            pass

        Lengths.pairs = {
            "chosen_ids": [p["chosen_ids"] for p in pairs],
            "rejected_ids": [p["rejected_ids"] for p in pairs],
        }
        order = list(LengthGroupedSampler(Lengths(), batch_size=args.pairs, seed=0))
        batches = [[pairs[i] for i in order[b * args.pairs : (b + 1) * args.pairs]] for b in range(args.batches)]
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
