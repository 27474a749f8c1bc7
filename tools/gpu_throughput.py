"""Packed training throughput on one GPU: an InternLM2-1.8B-shaped random model, bf16, rows of 8192 tokens.

    python tools/gpu_throughput.py                  # every arm, 3 warm-up + 20 measured steps
    python tools/gpu_throughput.py --check          # no GPU needed: the arguments, model shape and data only

Arms, each in its own process (its peak memory is its own), all on the same steps of UltraFeedback-sample
pairs (../shared/data, tokenised by tools/bench_throughput's tokenizer, max_length 4096) in the same order:
the pairs packed whole, in a seeded order, into rows of at most --row-tokens tokens (`rmtrain.data.packing.
pack_pairs`, as `use_varlen_attn=True` training packs them), one row per optimizer step:

  packed_flash   rmtrain's RewardModel, use_varlen_attn: flash-attn's varlen kernel (needs flash-attn)
  packed_sdpa    the same rows through rmtrain's SDPA fallback (bucketed causal SDPA), flash-attn not used
  trl            trl.RewardTrainer (LlamaForSequenceClassification, SDPA, padded), each step's pairs as one
                 batch of the step's pair count (rounded mean; the steps' pairs in the same order)

The model is a Llama with InternLM2-1.8B's shapes (hidden 2048, 24 layers, 16 heads, 8 key/value heads,
intermediate 8192, vocab 92544): the same compute as InternLM2's modeling code, without its remote code.
bf16 autocast over fp32 weights (rmtrain's AutocastOptimWrapper on a GPU), AdamW, no activation checkpointing.
Printed per arm: real tokens/s/GPU, MFU (model FLOPs: 6 x parameters x tokens plus causal attention,
over the GPU's dense bf16 peak: --peak-tflops, or looked up from the device name), peak GPU memory.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INTERNLM2_1_8B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
    vocab_size=92544, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5,
)  # fmt: skip
ARMS = ("packed_flash", "packed_sdpa", "trl")
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def trunk_parameters(shape: dict) -> int:
    """Embeddings, layers and final norm of a Llama with this shape, plus the 1-output value head."""
    h, i, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    kv = shape["num_key_value_heads"] * (h // shape["num_attention_heads"])
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return shape["vocab_size"] * h + n * per_layer + h + h


def step_flops(parameters: int, shape: dict, lengths: list[int]) -> float:
    """Training FLOPs of one step: 6 per parameter per token (matmuls, forward and backward), plus causal
    attention (QK^T and AV: 2 x 2 x L²/2 x hidden per layer forward, x3 with backward)."""
    tokens = sum(lengths)
    attention = 3 * 2 * shape["hidden_size"] * shape["num_hidden_layers"] * sum(n * n for n in lengths)
    return 6 * parameters * tokens + attention


def peak_tflops(device_name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in device_name), None)


def build_steps(args) -> tuple[Path, Path, list[list[int]]]:
    """The tokenizer, the tokenised pairs (a datasets folder) and the steps: pair indices per row, in order."""
    from rmtrain.data.packing import pack_pairs
    from tools.bench_throughput.inputs import build_pairs, build_tokenizer
    from tools.bench_throughput.settings import DATASETS

    cache = Path(args.work_dir) / "cache"
    data_root = Path(args.data_root)
    tokenizer_dir = build_tokenizer(data_root, 32000, cache)
    spec = DATASETS["ultrafeedback"]
    pairs_dir, ref = build_pairs(data_root / spec["file"], spec["map_fn"], tokenizer_dir, args.max_length, cache)
    rows = pack_pairs(ref["lengths"], args.row_tokens, seed=0)
    total = args.warmup + args.steps
    steps = (rows * (1 + total // len(rows)))[:total]
    return tokenizer_dir, pairs_dir, steps


def run_arm(arm: str, args) -> dict:
    """One arm in this process: train the steps, return its figures."""
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaModel

    from rmtrain.data import preference_collate_fn
    from rmtrain.model import RewardModel, packed_attention

    pairs = datasets.load_from_disk(args.pairs_dir)
    steps = json.loads(Path(args.steps_file).read_text())
    chosen, rejected = pairs["chosen_ids"], pairs["rejected_ids"]
    config = LlamaConfig(**INTERNLM2_1_8B, use_cache=False, attention_dropout=0.0)
    torch.manual_seed(0)
    device = torch.device("cuda")
    times, tokens, lengths_seen = [], [], []
    if arm.startswith("packed"):
        if arm == "packed_flash" and not packed_attention.flash_attn_installed():
            return {"arm": arm, "skipped": "flash-attn is not installed"}
        if arm == "packed_sdpa":  # this benchmark's comparison: rmtrain's fallback kernel on the same GPU
            packed_attention.packed_attention_kernel = lambda device, dtype: packed_attention.SDPA
        trunk = LlamaModel(config)
        model = RewardModel(trunk, use_varlen_attn=True, use_activation_checkpointing=False).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for step in steps:
            row = [{"chosen_ids": chosen[i], "rejected_ids": rejected[i]} for i in step]
            data = preference_collate_fn([row])["data"]  # one packed row, as training collates a bin
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
            sequences = [chosen[i] for i in step] + [rejected[i] for i in step]
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(batch, mode="loss")["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            tokens.append(batch["num_tokens"])
            lengths_seen.append([len(s) for s in sequences])
        kernel = packed_attention.packed_attention_kernel(device, torch.bfloat16)
    else:
        from transformers import AutoTokenizer, LlamaForSequenceClassification, TrainerCallback
        from trl import RewardConfig, RewardTrainer

        pairs_per_step = max(1, round(sum(map(len, steps)) / len(steps)))
        order = [i for step in steps for i in step]
        flat = pairs.select(order)
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
        config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
        model = LlamaForSequenceClassification(config)
        model.config._attn_implementation = "sdpa"

        class Timer(TrainerCallback):
            def on_step_begin(self, a, state, control, **kwargs):
                torch.cuda.synchronize()
                self.start = time.perf_counter()

            def on_step_end(self, a, state, control, **kwargs):
                torch.cuda.synchronize()
                times.append(time.perf_counter() - self.start)

        trl_args = RewardConfig(
            output_dir=str(Path(args.work_dir) / "trl_out"), max_steps=len(steps),
            per_device_train_batch_size=pairs_per_step, learning_rate=1e-5, lr_scheduler_type="constant",
            bf16=True, gradient_checkpointing=False, max_length=args.max_length, center_rewards_coefficient=None,
            eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
            train_sampling_strategy="sequential", optim="adamw_torch", dataloader_num_workers=0, seed=0,
        )  # fmt: skip
        trainer = RewardTrainer(
            model=model, args=trl_args, train_dataset=flat, processing_class=tokenizer, callbacks=[Timer()]
        )
        trainer.train()
        for k in range(len(times)):
            step = order[k * pairs_per_step : (k + 1) * pairs_per_step]
            seqs = [len(chosen[i]) for i in step] + [len(rejected[i]) for i in step]
            tokens.append(sum(seqs))
            lengths_seen.append(seqs)
        kernel = "sdpa (padded)"
    window = slice(args.warmup, None)
    seconds = sum(times[window])
    parameters = trunk_parameters(INTERNLM2_1_8B)
    flops = sum(step_flops(parameters, INTERNLM2_1_8B, lengths) for lengths in lengths_seen[window])
    peak = peak_tflops(torch.cuda.get_device_name(device), args.peak_tflops)
    return {
        "arm": arm, "kernel": kernel, "tokens_per_s": sum(tokens[window]) / seconds,
        "s_per_step": seconds / len(times[window]), "mfu": flops / seconds / (peak * 1e12) if peak else None,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30, "device": torch.cuda.get_device_name(device),
    }  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--row-tokens", type=int, default=8192, help="tokens per packed row (default 8192)")
    parser.add_argument("--max-length", type=int, default=4096, help="tokens per sequence (default 4096)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by name)")
    parser.add_argument(
        "--data-root", default=os.environ.get("RMTRAIN_BENCH_DATA", str(ROOT.parent / "shared" / "data"))
    )
    parser.add_argument("--work-dir", default=str(ROOT / "work_dirs" / "gpu_throughput"))
    parser.add_argument("--check", action="store_true", help="no GPU: check the arguments, model shape and data")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    parser.add_argument("--pairs-dir", help=argparse.SUPPRESS)
    parser.add_argument("--steps-file", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if args.row_tokens < 2 * args.max_length:
        parser.error(f"--row-tokens {args.row_tokens} must hold a whole pair of two --max-length {args.max_length}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.arm:
        result = run_arm(args.arm, args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    parameters = trunk_parameters(INTERNLM2_1_8B)
    print(f"model: InternLM2-1.8B shape as Llama, {parameters / 1e9:.2f}B parameters (trunk and value head)")
    tokenizer_dir, pairs_dir, steps = build_steps(args)
    row_tokens = []
    import datasets

    pairs = datasets.load_from_disk(str(pairs_dir))
    for step in steps:
        row_tokens.append(sum(len(pairs[i]["chosen_ids"]) + len(pairs[i]["rejected_ids"]) for i in step))
    mean_pairs = sum(map(len, steps)) / len(steps)
    print(f"data: {len(steps)} rows of at most {args.row_tokens} tokens (mean {sum(row_tokens) / len(steps):.0f} "
          f"tokens, {mean_pairs:.1f} pairs)", flush=True)  # fmt: skip
    if args.check:
        print("check: arguments, model shape and rows built; no GPU used")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: run with --check on a machine without a GPU")
        return 1
    steps_file = Path(args.work_dir) / "steps.json"
    steps_file.write_text(json.dumps(steps))
    results = []
    for arm in args.arms:
        command = [sys.executable, __file__, "--arm", arm, "--pairs-dir", str(pairs_dir), "--steps-file",
                   str(steps_file), "--tokenizer-dir", str(tokenizer_dir), "--steps", str(args.steps), "--warmup", str(args.warmup), "--work-dir",
                   args.work_dir, "--max-length", str(args.max_length), "--row-tokens", str(args.row_tokens)]  # fmt: skip
        if args.peak_tflops:
            command += ["--peak-tflops", str(args.peak_tflops)]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        result = json.loads(lines[-1][7:]) if lines else {"arm": arm, "failed": proc.stderr.strip()[-800:]}
        results.append(result)
        if "tokens_per_s" in result:
            mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a (--peak-tflops)"
            print(f"{arm:13s} {result['tokens_per_s']:>10,.0f} tokens/s/GPU  MFU {mfu}  peak {result['peak_gib']:.1f} GiB"
                  f"  {result['s_per_step']:.2f} s/step  ({result['kernel']}, {result['device']})", flush=True)  # fmt: skip
        else:
            print(f"{arm:13s} {result.get('skipped') or 'FAILED: ' + result.get('failed', '')}", flush=True)
    (Path(args.work_dir) / "results.json").write_text(json.dumps(results, indent=1))
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
