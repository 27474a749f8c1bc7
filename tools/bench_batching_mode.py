"""Packed rows or padded batches: which is faster for a data set, on this CPU, step by step.

    python tools/bench_batching_mode.py --threads 1

For each data set (the demo recipe's generated pairs, HH-RLHF helpful-base, the UltraFeedback sample;
tokenised by tools/bench_throughput's tokenizer) it draws --batches length-grouped batches of --pairs pairs
(rmtrain's LengthGroupedSampler, seed 0) and times the same batch both ways, alternately, on the same
random-init model (the benchmark's 10m Llama, bf16 autocast): forward, backward and AdamW step, the
fastest of --repeats (the least disturbed by other load on the machine). Printed per data set: the
padding share of the padded batches, the mean sequence length, and the padded / packed time ratio
(above 1: packed is faster). `rmtrain.data.packing.PACKING_PAYS_FROM_PADDING` is read from these figures.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_lengths(tokenizer_dir: Path) -> list[dict]:
    from transformers import AutoTokenizer

    from rmtrain.data import build_demo_preference_data, build_preference_dataset
    from tools.bench_throughput.settings import REWARD_TOKEN

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    pairs = build_preference_dataset(
        dataset=dict(type=build_demo_preference_data, num_pairs=2000, seed=0), tokenizer=tokenizer,
        max_length=96, dataset_map_fn=None, is_dpo=False, is_reward=True,
        reward_token_id=tokenizer.convert_tokens_to_ids(REWARD_TOKEN), num_proc=1,
    )  # fmt: skip
    return [pairs[i] for i in range(len(pairs))]


def bench_pairs(name: str, tokenizer_dir: Path, cache: Path, data_root: Path) -> list[dict]:
    if name == "demo":
        return demo_lengths(tokenizer_dir)
    import datasets

    from tools.bench_throughput.inputs import build_pairs
    from tools.bench_throughput.settings import DATASETS

    spec = DATASETS[name]
    pairs_dir, _ = build_pairs(data_root / spec["file"], spec["map_fn"], tokenizer_dir, 1024, cache)
    pairs = datasets.load_from_disk(str(pairs_dir))
    return [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(pairs["chosen_ids"], pairs["rejected_ids"])]


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """The options both step benchmarks share: batch size and count, repeats, threads."""
    parser.add_argument("--pairs", type=int, default=8, help="pairs per batch (default 8)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)


def bench_inputs() -> tuple[Path, Path, Path]:
    """(tokenizer folder, cache folder, data root) of tools/bench_throughput, the tokenizer built once."""
    from tools.bench_throughput.inputs import build_tokenizer
    from tools.bench_throughput.settings import DEFAULT_DATA_ROOT

    cache = ROOT / "work_dirs" / "bench_throughput" / "cache"
    data_root = Path(DEFAULT_DATA_ROOT)
    return build_tokenizer(data_root, 32000, cache), cache, data_root


def bench_reward_model(mode: str):
    """The benchmark's 10m Llama reward model (the same weights every call) and its AdamW, for `mode`."""
    from transformers import LlamaConfig, LlamaModel

    from rmtrain.model import RewardModel
    from tools.bench_throughput.settings import MODEL_SIZES

    config = LlamaConfig(vocab_size=32000, max_position_embeddings=1024, use_cache=False, **MODEL_SIZES["10m"])
    torch.manual_seed(0)
    trunk = LlamaModel(config)
    trunk.config._attn_implementation = "sdpa"
    model = RewardModel(trunk, use_varlen_attn=mode == "packed", use_activation_checkpointing=False).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-5)


def timed_step(model, optimizer, data: dict) -> float:
    """Seconds of one forward, backward and AdamW step under bf16 autocast."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(data, mode="loss")["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def length_grouped_batches(pairs: list[dict], pairs_per_batch: int, count: int) -> list[list[dict]]:
    """The first `count` batches rmtrain's LengthGroupedSampler (seed 0) makes of `pairs`."""
    from rmtrain.data.packing import LengthGroupedSampler

    class Lengths:  # what the sampler reads
        pass

    Lengths.pairs = {
        "chosen_ids": [p["chosen_ids"] for p in pairs],
        "rejected_ids": [p["rejected_ids"] for p in pairs],
    }
    order = list(LengthGroupedSampler(Lengths(), batch_size=pairs_per_batch, seed=0))
    return [[pairs[i] for i in order[b * pairs_per_batch : (b + 1) * pairs_per_batch]] for b in range(count)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="demo,hh,ultrafeedback")
    add_batch_options(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rmtrain.data import preference_collate_fn

    tokenizer_dir, cache, data_root = bench_inputs()
    models = {mode: bench_reward_model(mode) for mode in ("padded", "packed")}

    def step(mode: str, data: dict) -> float:
        return timed_step(*models[mode], data)

    print(f"{'data':14s} {'padding':>8s} {'mean len':>9s} {'padded/packed time':>19s}  per batch")
    for name in args.datasets.split(","):
        pairs = bench_pairs(name, tokenizer_dir, cache, data_root)
        real = slots = 0
        ratios, lengths = [], []
        for batch in length_grouped_batches(pairs, args.pairs, args.batches):
            padded = preference_collate_fn(batch, pad_token_id=0)["data"]
            packed = preference_collate_fn([batch])["data"]
            real += padded["num_tokens"]
            slots += padded["input_ids"].numel()
            lengths.append(padded["num_tokens"] / (2 * len(batch)))
            step("padded", padded), step("packed", packed)  # warm-up on this shape
            times = {"padded": [], "packed": []}
            for _ in range(args.repeats):
                for mode, data in (("padded", padded), ("packed", packed)):
                    times[mode].append(step(mode, data))
            ratios.append(min(times["padded"]) / min(times["packed"]))
        print(f"{name:14s} {1 - real / slots:8.1%} {statistics.mean(lengths):9.0f} {statistics.median(ratios):19.2f}  "
              + " ".join(f"{r:.2f}" for r in ratios), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
