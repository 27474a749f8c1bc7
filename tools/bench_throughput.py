"""Training throughput: rmtrain (packed and padded) against TRL's RewardTrainer and a bare-model ceiling.

One invocation runs, for every model size and data set, four arms on identical inputs:

  rmtrain_packed  the real `rmtrain train` path (`rmtrain.engine.train.train`) with use_varlen_attn=True:
                  whole pairs packed into bins of at most M tokens, one bin per optimizer step
                  (M is chosen so that a bin holds about P pairs on average; at least 2 x max_length).
  rmtrain_padded  the same config with use_varlen_attn=False, P pairs per step, right-padded batches of
                  similar length (rmtrain.data.packing.LengthGroupedSampler).
  trl             trl.RewardTrainer with LlamaForSequenceClassification(num_labels=1), P pairs per step,
                  fed the very token ids rmtrain trains on (pre-tokenised chosen_ids / rejected_ids).
  ceiling         the bare model: forward + backward + optimizer step on fixed-shape [2P, L] batches cut
                  from the same tokenised data (L = mean sequence length), no padding, no data pipeline,
                  the same value head and loss.
  trl_grouped     (opt-in: --arms ...,trl_grouped) TRL with transformers' length-grouped sampler
                  (train_sampling_strategy="group_by_length") instead of its default random batches.

Turned off in TRL because rmtrain's arms do not do it: evaluation (eval_strategy="no"), checkpoint saving
(save_strategy="no"), external logging (report_to="none"), reward centering (center_rewards_coefficient=None),
gradient checkpointing (TRL's default is on), the progress bar; TRL's default fused AdamW is replaced by
torch.optim.AdamW (rmtrain's optimizer). rmtrain's arms save no checkpoints and log to scalars.json only (no
TensorBoard); both log every 10 steps. Dropout is 0 in the model.

Shared by every arm: the byte-level BPE tokenizer (trained here on the benchmark texts, ChatML template,
pad token, reward token), the random-init Llama weights (saved once, loaded by every arm), max_length,
AdamW with the same lr / betas / weight decay / gradient clipping, a constant learning rate, bf16
autocast where the CPU supports it (rmtrain.engine.precision's check), `--threads` torch threads, no
gradient checkpointing. Each arm runs in its own subprocess, so its peak RSS is its own.

Measured per arm over the same window (optimizer steps warmup+1 .. warmup+steps; model build, data
tokenising and the first iterations are outside it): real (non-pad) tokens per second, the padded
fraction (pad slots / all token slots), peak RSS of the arm's process, mean pairs per step.

Install the benchmark-only dependency (TRL) without letting pip replace the CPU torch build:

    echo "torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')" > /tmp/torch-pin.txt
    pip install -c /tmp/torch-pin.txt -r tools/bench_requirements.txt

Run (the full benchmark, and a quick check):

    python tools/bench_throughput.py --sizes 10m,100m --datasets hh,ultrafeedback --write-docs
    python tools/bench_throughput.py --smoke

Run it on an otherwise idle machine: with other processes on the same cores, step times vary several-fold
(the script warns when the load average is high and records it per arm). --smoke numbers only show that every
arm runs. Full run (2 sizes x 2 data sets x 4 arms, 20 measured steps): roughly 35-45 minutes on an idle
2-core CPU. Outputs: the tables on stdout, <work-dir>/results.json, per-arm logs and generated rmtrain configs
under <work-dir>/runs/, and with --write-docs docs/benchmarks.md.

Data: /work/shared/data (or --data-root / $RMTRAIN_BENCH_DATA); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_ROOT = os.environ.get("RMTRAIN_BENCH_DATA", "/work/shared/data")

ARMS = ("rmtrain_packed", "rmtrain_padded", "trl", "ceiling")
# Opt-in (--arms ...,trl_grouped): TRL with transformers' length-grouped sampler instead of random batches.
EXTRA_ARMS = ("trl_grouped",)
ALL_ARMS = ARMS[:3] + EXTRA_ARMS + ARMS[3:]
ARM_TITLES = {
    "rmtrain_packed": "rmtrain packed",
    "rmtrain_padded": "rmtrain padded",
    "trl": "TRL RewardTrainer",
    "trl_grouped": "TRL + group_by_length",
    "ceiling": "ceiling (bare model)",
}

# Llama shapes. "tiny" is for --smoke only.
MODEL_SIZES = {
    "10m": dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2
    ),
    "100m": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
}

DATASETS = {
    "hh": dict(file="hh-rlhf/helpful-base/test.jsonl.gz", map_fn="hh_rlhf_map_fn"),
    "ultrafeedback": dict(
        file="ultrafeedback-binarized-sample/train_clean.jsonl.gz", map_fn="string_preference_map_fn"
    ),
}

# The tokenizer: rmtrain's demo special tokens and ChatML template, a BPE vocabulary trained on the
# texts of both benchmark data sets (always both, so the vocabulary does not depend on --datasets).
TOKENIZER_DATASETS = ("hh", "ultrafeedback")
REWARD_TOKEN = "<|reward|>"
SEED = 0
LOG_INTERVAL = 10  # rmtrain LoggerHook interval and TRL logging_steps: the same logging work in both


# ============================================================================ helpers shared by parent and arms


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def summarize_steps(records: list[dict], warmup: int, steps: int) -> dict:
    """Per-step records (t = wall time at the end of the optimizer step, real, slots, pairs) -> window metrics."""
    if len(records) < warmup + steps:
        raise RuntimeError(f"only {len(records)} optimizer steps recorded, {warmup + steps} needed")
    window = records[warmup : warmup + steps]
    elapsed = records[warmup + steps - 1]["t"] - records[warmup - 1]["t"]
    real = sum(r["real"] for r in window)
    slots = sum(r["slots"] for r in window)
    pairs = sum(r["pairs"] for r in window)
    step_times = [records[i]["t"] - records[i - 1]["t"] for i in range(warmup, warmup + steps)]
    return {
        "tokens_per_s": real / elapsed,
        "padded_fraction": 1 - real / slots if slots else 0.0,
        "mean_pairs_per_step": pairs / steps,
        "tokens_per_seq": real / (2 * pairs) if pairs else 0.0,
        "tokens_per_step": real / steps,
        "step_s": elapsed / steps,
        "step_s_median": sorted(step_times)[len(step_times) // 2],
        "step_s_min": min(step_times),
        "step_s_max": max(step_times),
        "window_s": elapsed,
    }


def token_digest(chosen: list[list[int]], rejected: list[list[int]]) -> str:
    """A fingerprint of every pair's token ids, in order: arms that see identical sequences agree on it."""
    digest = hashlib.sha256()
    for c, r in zip(chosen, rejected):
        digest.update(json.dumps([c, r]).encode())
    return digest.hexdigest()[:16]


def _activation_checkpointing(model) -> bool:
    """Whether a transformers model recomputes activations (the attribute was renamed in transformers 5)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or name in vars(model):
            return bool(getattr(model, name))
    return False


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


# ============================================================================ rmtrain arms

RMTRAIN_CONFIG_TEMPLATE = """\
# Generated by tools/bench_throughput.py: the {arm} arm ({size}, {dataset}).
from mmengine.dataset import DefaultSampler
from mmengine.hooks import DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, Visualizer
from torch.optim import AdamW
from transformers import AutoTokenizer, LlamaModel

from bench_throughput import BenchStepHook
from rmtrain.data import build_preference_dataset, load_jsonl_dataset, preference_collate_fn
from rmtrain.data.packing import LengthGroupedSampler
from rmtrain.engine import AutocastOptimWrapper, RewardLogProcessor, TrainLoop
from rmtrain.model import RewardModel

# Settings
model_dir = {model_dir!r}  # random-init Llama ({size}: {shape}), the same weights in every arm
tokenizer_dir = {tokenizer_dir!r}
data_file = {data_file!r}
reward_token_id = {reward_token_id}
pad_token_id = {pad_token_id}
use_varlen_attn = {use_varlen_attn}
max_length = {max_length}
max_packed_length = {max_packed_length}
batch_size = {batch_size}  # packed: bins per step; padded: pairs per step
max_iters = {max_iters}
lr = {lr}
betas = {betas!r}
weight_decay = {weight_decay}
max_norm = {max_norm}
mixed_precision = {dtype!r}

tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=tokenizer_dir)

model = dict(
    type=RewardModel,
    reward_token_id=reward_token_id,
    loss_type="ranking",
    penalty_type="none",  # plain Bradley-Terry, as TRL's loss without centering
    use_activation_checkpointing=False,
    use_varlen_attn=use_varlen_attn,
    llm=dict(
        type=LlamaModel.from_pretrained,
        pretrained_model_name_or_path=model_dir,
        dtype="float32",
        attn_implementation="sdpa",
    ),
)

train_dataset = dict(
    type=build_preference_dataset,
    dataset=dict(type=load_jsonl_dataset, data_files=data_file),
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn={map_fn!r},
    is_dpo=False,
    is_reward=True,
    reward_token_id=reward_token_id,
    num_proc=1,
    skip_bad_records=True,  # a few HH-RLHF records have an empty response
    use_varlen_attn=use_varlen_attn,
    max_packed_length=max_packed_length,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    dataset=train_dataset,
    sampler={sampler},
    collate_fn=dict(type=preference_collate_fn, pad_token_id=pad_token_id, use_varlen_attn=use_varlen_attn),
)

optim_wrapper = dict(
    type=AutocastOptimWrapper,
    dtype=mixed_precision,
    optimizer=dict(type=AdamW, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=1,
)

param_scheduler = []  # constant learning rate, as in the other arms
train_cfg = dict(type=TrainLoop, max_iters=max_iters)

custom_hooks = [dict(type=BenchStepHook, out_file={steps_file!r})]
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval={log_interval}),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=None,  # no saving in any arm
    sampler_seed=dict(type=DistSamplerSeedHook),
)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="gloo"))
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend)])  # scalars.json only, no TensorBoard
log_processor = dict(type=RewardLogProcessor, by_epoch=False, window_size={log_interval})
log_level = "INFO"
randomness = dict(seed={seed}, deterministic=False)
"""


_HOOK_CLASS = None


def _bench_step_hook_class():
    """An mmengine hook that records the wall time and the token counts of every optimizer step."""
    global _HOOK_CLASS
    if _HOOK_CLASS is not None:
        return _HOOK_CLASS
    from mmengine.hooks import Hook

    class BenchStepHook(Hook):
        priority = "LOWEST"  # after the optimizer step, the scheduler and the logger of the iteration

        def __init__(self, out_file: str):
            self.out_file = out_file
            self.records: list[dict] = []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            t = time.perf_counter()
            data = data_batch["data"]
            self.records.append(
                {
                    "t": t,
                    "real": int(data["num_tokens"]),
                    "slots": int(data["input_ids"].numel()),
                    "pairs": int(data["margin"].numel()),
                }
            )

        def after_train(self, runner):
            import torch

            dataset = runner.train_dataloader.dataset
            summary = getattr(dataset, "summary", {})
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            wrapper = runner.optim_wrapper
            checks = {
                "autocast": "bf16" if wrapper.autocast_enabled("cpu") else "no",
                "grad_checkpointing": _activation_checkpointing(model.model),
                "optimizer": type(wrapper.optimizer).__name__,
                "threads": torch.get_num_threads(),
                "attention": model.model.config._attn_implementation,
            }
            pairs = dataset.pairs  # PreferenceDataset, or PackedPreferenceDataset over one
            pairs = getattr(pairs, "pairs", pairs) if not hasattr(pairs, "column_names") else pairs
            digest = token_digest(pairs["chosen_ids"], pairs["rejected_ids"])
            out = {"records": self.records, "dataset_tokens": summary.get("tokens"), "dataset_pairs": summary.get("pairs"),
                   "token_digest": digest, "checks": checks}  # fmt: skip
            Path(self.out_file).write_text(json.dumps(out))

    _HOOK_CLASS = BenchStepHook
    return BenchStepHook


def __getattr__(name):  # `from bench_throughput import BenchStepHook` in generated configs (PEP 562)
    if name == "BenchStepHook":
        return _bench_step_hook_class()
    raise AttributeError(name)


def run_rmtrain_arm(spec: dict) -> dict:
    packed = spec["arm"] == "rmtrain_packed"
    run_dir = Path(spec["run_dir"])
    steps_file = run_dir / "steps.json"
    sampler = (
        "dict(type=DefaultSampler, shuffle=True)"
        if packed
        else "dict(type=LengthGroupedSampler, batch_size=batch_size)"
    )
    config_text = RMTRAIN_CONFIG_TEMPLATE.format(
        arm=spec["arm"],
        size=spec["size"],
        shape=", ".join(f"{k}={v}" for k, v in MODEL_SIZES[spec["size"]].items()),
        dataset=spec["dataset"],
        model_dir=spec["model_dir"],
        tokenizer_dir=spec["tokenizer_dir"],
        data_file=spec["data_file"],
        map_fn=spec["map_fn"],
        reward_token_id=spec["reward_token_id"],
        pad_token_id=spec["pad_token_id"],
        use_varlen_attn=packed,
        max_length=spec["max_length"],
        max_packed_length=spec["max_packed_length"],
        batch_size=1 if packed else spec["pairs_per_step"],
        max_iters=spec["warmup"] + spec["steps"],
        lr=spec["lr"],
        betas=tuple(spec["betas"]),
        weight_decay=spec["weight_decay"],
        max_norm=spec["max_norm"],
        dtype=spec["dtype"],
        sampler=sampler,
        steps_file=str(steps_file),
        log_interval=LOG_INTERVAL,
        seed=SEED,
    )
    config_path = run_dir / f"bench_{spec['arm']}.py"
    config_path.write_text(config_text)

    from rmtrain.engine.train import train

    train(str(config_path), work_dir=str(run_dir / "work_dir"))
    out = json.loads(steps_file.read_text())
    return out


# ============================================================================ TRL arm


def run_trl_arm(spec: dict) -> dict:
    import datasets
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaForSequenceClassification,
        TrainerCallback,
    )
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer_dir"])
    model = LlamaForSequenceClassification.from_pretrained(
        spec["model_dir"], num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
    )
    # Pre-tokenised by rmtrain's own code (template, truncation, reward token): TRL skips its tokenising.
    pairs = datasets.load_from_disk(spec["pairs_dir"])
    grouped = spec["arm"] == "trl_grouped"
    if grouped:  # transformers' LengthGroupedSampler reads a "length" column (it cannot infer one here)
        pairs = pairs.map(lambda row: {"length": max(len(row["chosen_ids"]), len(row["rejected_ids"]))})

    class CountingCollator:
        """TRL's own collator; remembers every batch's real tokens, slots and pairs, in order."""

        def __init__(self, pad_token_id: int):
            self.inner = DataCollatorForPreference(pad_token_id=pad_token_id)
            self.batches: list[dict] = []

        def __call__(self, examples):
            batch = self.inner(examples)
            self.batches.append(
                {
                    "real": int(batch["attention_mask"].sum()),
                    "slots": int(batch["input_ids"].numel()),
                    "pairs": batch["input_ids"].shape[0] // 2,
                }
            )
            return batch

    class StepTimes(TrainerCallback):
        def __init__(self, collator: CountingCollator):
            self.collator = collator
            self.records: list[dict] = []

        def on_step_end(self, args, state, control, **kwargs):
            # Gradient accumulation is 1: optimizer step k consumed collated batch k.
            record = dict(self.collator.batches[len(self.records)], t=time.perf_counter())
            self.records.append(record)

    collator = CountingCollator(tokenizer.pad_token_id)
    step_times = StepTimes(collator)
    args = RewardConfig(
        output_dir=str(Path(spec["run_dir"]) / "trl_out"),
        max_steps=spec["warmup"] + spec["steps"],
        per_device_train_batch_size=spec["pairs_per_step"],
        gradient_accumulation_steps=1,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=spec["weight_decay"],
        adam_beta1=spec["betas"][0],
        adam_beta2=spec["betas"][1],
        max_grad_norm=spec["max_norm"],
        optim="adamw_torch",  # torch.optim.AdamW as in rmtrain (TRL's default here would be the fused AdamW)
        bf16=spec["bf16"],
        activation_checkpointing=False,  # TRL's default (gradient_checkpointing=True) is on; off in every arm
        gradient_checkpointing=False,
        max_length=spec["max_length"],
        center_rewards_coefficient=None,  # no reward centering (rmtrain: penalty_type="none")
        disable_dropout=True,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=LOG_INTERVAL,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        use_cpu=True,
        seed=SEED,
        data_seed=SEED,
        push_to_hub=False,
        **(dict(train_sampling_strategy="group_by_length", remove_unused_columns=False) if grouped else {}),
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=pairs,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[step_times],
    )
    prepared = trainer.train_dataset
    dataset_tokens = sum(len(ids) for ids in prepared["chosen_ids"]) + sum(len(ids) for ids in prepared["rejected_ids"])
    trainer.train()
    checks = {
        "autocast": trainer.accelerator.mixed_precision,
        "grad_checkpointing": _activation_checkpointing(trainer.model),
        "optimizer": type(
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        ).__name__,
        "threads": torch.get_num_threads(),
        "attention": trainer.model.config._attn_implementation,
    }
    digest = token_digest(prepared["chosen_ids"], prepared["rejected_ids"])
    return {"records": step_times.records, "dataset_tokens": dataset_tokens, "dataset_pairs": len(prepared),
            "token_digest": digest, "checks": checks}  # fmt: skip


# ============================================================================ ceiling arm


def run_ceiling_arm(spec: dict) -> dict:
    import datasets
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import LlamaModel

    pairs = datasets.load_from_disk(spec["pairs_dir"])
    stream = [t for c, r in zip(pairs["chosen_ids"], pairs["rejected_ids"]) for t in (*c, *r)]
    num_sequences = 2 * len(pairs)
    row_len = max(2, round(len(stream) / num_sequences))  # mean sequence length
    rows = 2 * spec["pairs_per_step"]
    total_steps = spec["warmup"] + spec["steps"]
    tokens_per_step = rows * row_len
    data = torch.tensor(stream, dtype=torch.long)
    repeats = -(-(total_steps * tokens_per_step) // len(stream))
    data = data.repeat(repeats)[: total_steps * tokens_per_step].view(total_steps, rows, row_len)

    trunk = LlamaModel.from_pretrained(spec["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    trunk.config.use_cache = False
    v_head = nn.Linear(trunk.config.hidden_size, 1, bias=False)
    nn.init.zeros_(v_head.weight)
    trunk.train()
    params = list(trunk.parameters()) + list(v_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec["betas"]), weight_decay=spec["weight_decay"])
    half = spec["pairs_per_step"]
    records = []
    for step in range(total_steps):
        input_ids = data[step]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
            hidden = trunk(input_ids=input_ids, use_cache=False).last_hidden_state
            scores = v_head(hidden[:, -1].to(v_head.weight.dtype)).squeeze(-1).float()
        loss = -F.logsigmoid(scores[:half] - scores[half:]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["max_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        records.append({"t": time.perf_counter(), "real": tokens_per_step, "slots": tokens_per_step, "pairs": half})
    checks = {"autocast": "bf16" if spec["bf16"] else "no", "grad_checkpointing": False, "optimizer": type(optimizer).__name__,
              "threads": torch.get_num_threads(), "attention": trunk.config._attn_implementation, "row_len": row_len}  # fmt: skip
    digest = token_digest(pairs["chosen_ids"], pairs["rejected_ids"])
    return {"records": records, "dataset_tokens": len(stream), "dataset_pairs": len(pairs), "token_digest": digest,
            "checks": checks}  # fmt: skip


ARM_RUNNERS = {
    "rmtrain_packed": run_rmtrain_arm,
    "rmtrain_padded": run_rmtrain_arm,
    "trl": run_trl_arm,
    "trl_grouped": run_trl_arm,
    "ceiling": run_ceiling_arm,
}


def arm_main(spec_path: str) -> int:
    """Entry point of an arm's own subprocess: run it, write its result JSON next to the spec."""
    spec = json.loads(Path(spec_path).read_text())
    set_threads(spec["threads"])
    result_path = Path(spec["run_dir"]) / "result.json"
    try:
        out = ARM_RUNNERS[spec["arm"]](spec)
        result = {"ok": True, **summarize_steps(out.pop("records"), spec["warmup"], spec["steps"]), **out}
    except BaseException as error:  # noqa: BLE001  report any failure; the parent goes on with the other arms
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    result["peak_rss_mib"] = peak_rss_mib()
    result_path.write_text(json.dumps(result))
    return 0 if result["ok"] else 1


# ============================================================================ parent: shared inputs


def _file_digest(paths: list[Path], *extra) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    for item in extra:
        digest.update(repr(item).encode())
    return digest.hexdigest()[:12]


def _read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_tokenizer(data_root: Path, vocab_size: int, cache_dir: Path) -> Path:
    """Byte-level BPE trained on the benchmark texts; rmtrain's demo special tokens and ChatML template."""
    from rmtrain.data.bpe import CHAT_SPECIAL_TOKENS as DEMO_SPECIAL_TOKENS
    from rmtrain.data.bpe import CHATML_TEMPLATE as DEMO_CHAT_TEMPLATE

    files = [data_root / DATASETS[name]["file"] for name in TOKENIZER_DATASETS]
    out_dir = cache_dir / f"tokenizer-{vocab_size}-{_file_digest(files, DEMO_SPECIAL_TOKENS, DEMO_CHAT_TEMPLATE)}"
    if (out_dir / "tokenizer.json").is_file():
        return out_dir
    from rmtrain.data.bpe import chat_tokenizer, train_byte_level_bpe
    from rmtrain.data.map_fns import resolve_map_fn
    from rmtrain.errors import RecordFieldError

    texts = []
    for name, path in zip(TOKENIZER_DATASETS, files):
        map_fn = resolve_map_fn(DATASETS[name]["map_fn"])
        for record in _read_jsonl_gz(path):
            try:
                mapped = map_fn(record)
            except RecordFieldError:  # dropped by the data set builder too
                continue
            for key in ("prompt", "chosen", "rejected"):
                texts += [f"{m['role']}\n{m['content']}\n" for m in mapped[key]]
    start = time.time()
    fast = chat_tokenizer(train_byte_level_bpe(texts, vocab_size), model_max_length=1 << 20)
    assert fast.convert_tokens_to_ids(REWARD_TOKEN) not in (fast.pad_token_id, fast.unk_token_id)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    fast.save_pretrained(str(tmp))
    tmp.rename(out_dir)
    print(f"tokenizer: BPE vocab {len(fast)} trained in {time.time() - start:.1f}s -> {out_dir}", flush=True)
    return out_dir


def build_pairs(
    data_file: Path, map_fn: str, tokenizer_dir: Path, max_length: int, cache_dir: Path
) -> tuple[Path, dict]:
    """Tokenise a data set once with rmtrain's own code; TRL and the ceiling read these ids."""
    out_dir = (
        cache_dir
        / f"pairs-{data_file.name.split('.')[0]}-{max_length}-{_file_digest([data_file], tokenizer_dir.name, map_fn)}"
    )
    if not (out_dir / "dataset_info.json").is_file():
        from transformers import AutoTokenizer

        from rmtrain.data import build_preference_dataset, load_jsonl_dataset

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        dataset = build_preference_dataset(
            dataset=dict(type=load_jsonl_dataset, data_files=str(data_file)),
            tokenizer=tokenizer,
            max_length=max_length,
            dataset_map_fn=map_fn,
            is_dpo=False,
            is_reward=True,
            reward_token_id=tokenizer.convert_tokens_to_ids(REWARD_TOKEN),
            num_proc=1,
            skip_bad_records=True,
        )
        dataset.pairs.select_columns(["chosen_ids", "rejected_ids"]).save_to_disk(str(out_dir))
    import datasets

    pairs = datasets.load_from_disk(str(out_dir))
    lengths = [(len(c), len(r)) for c, r in zip(pairs["chosen_ids"], pairs["rejected_ids"])]
    digest = token_digest(pairs["chosen_ids"], pairs["rejected_ids"])
    return out_dir, {
        "lengths": lengths,
        "pairs": len(lengths),
        "tokens": sum(c + r for c, r in lengths),
        "digest": digest,
    }


def choose_max_packed_length(lengths: list[tuple[int, int]], pairs_per_step: int, max_length: int) -> tuple[int, float]:
    """The smallest M >= 2 * max_length whose bins hold at least `pairs_per_step` pairs on average
    (the same seeded packing rmtrain uses), and that average."""
    lower = 2 * max_length
    try:
        from rmtrain.data.packing import pack_pairs

        def pairs_per_bin(m: int) -> float:
            return len(lengths) / len(pack_pairs(lengths, m, seed=0))
    except ImportError:  # packing code changed: estimate from the mean pair length
        mean_pair = sum(c + r for c, r in lengths) / len(lengths)

        def pairs_per_bin(m: int) -> float:
            return m / mean_pair

    if pairs_per_bin(lower) >= pairs_per_step:
        return lower, pairs_per_bin(lower)
    upper = lower
    while pairs_per_bin(upper) < pairs_per_step and upper < sum(c + r for c, r in lengths):
        upper *= 2
    while upper - lower > 1:
        mid = (lower + upper) // 2
        if pairs_per_bin(mid) >= pairs_per_step:
            upper = mid
        else:
            lower = mid
    return upper, pairs_per_bin(upper)


def build_model(size: str, tokenizer_dir: Path, max_length: int, cache_dir: Path) -> tuple[Path, int]:
    """A random-init LlamaForSequenceClassification (num_labels=1, zero score head), saved once:
    every arm loads these weights (rmtrain and the ceiling take the trunk, TRL the whole model)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    out_dir = (
        cache_dir
        / f"model-{size}-{len(tokenizer)}-{max_length}-{_file_digest([tokenizer_dir / 'tokenizer.json'], MODEL_SIZES[size], SEED)}"
    )
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    if not (out_dir / "config.json").is_file():
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=max_length,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=False,
            num_labels=1,
            use_cache=False,
            **MODEL_SIZES[size],
        )
        torch.manual_seed(SEED)
        model = LlamaForSequenceClassification(config)
        with torch.no_grad():
            model.score.weight.zero_()  # rmtrain's value head starts at zero; so does every arm's
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        model.save_pretrained(str(tmp))
        tmp.rename(out_dir)
    return out_dir, _count_params(LlamaConfig.from_pretrained(str(out_dir)))


def _count_params(config) -> int:
    """Trunk (embeddings, layers, final norm) plus the value head: what every arm trains."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return config.vocab_size * h + n * per_layer + h + h


# ============================================================================ parent: run and report


def run_arm(spec: dict, timeout: float | None) -> dict:
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
        PYTHONPATH=os.pathsep.join([str(TOOLS_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    load_before = os.getloadavg()[0]
    start = time.time()
    with open(run_dir / "stdout.log", "w") as out, open(run_dir / "stderr.log", "w") as err:
        try:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--_arm", str(spec_path)],
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


def _fmt_ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or not a.get("ok") or not b.get("ok"):
        return "n/a"
    return f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x"


def format_table(results: dict, markdown: bool) -> list[str]:
    header = [
        "arm",
        "real tokens/s",
        "padded fraction",
        "peak MiB",
        "mean pairs/step",
        "tokens/seq",
        "s/step",
        "median s/step",
    ]
    rows = []
    for arm in ALL_ARMS:
        r = results.get(arm)
        if r is None:
            continue
        if r.get("ok"):
            rows.append([
                ARM_TITLES[arm], f"{r['tokens_per_s']:,.0f}", f"{r['padded_fraction']:.1%}", f"{r['peak_rss_mib']:,.0f}",
                f"{r['mean_pairs_per_step']:.2f}", f"{r['tokens_per_seq']:.0f}", f"{r['step_s']:.2f}",
                f"{r['step_s_median']:.2f}",
            ])  # fmt: skip
        else:
            error = r.get("error", "failed").replace("|", "/").replace("\n", " ")
            peak = f"{r['peak_rss_mib']:,.0f}" if "peak_rss_mib" in r else ""
            rows.append([ARM_TITLES[arm], f"failed: {error[:160]}", "", peak, "", "", "", ""])
    lines = []
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [
            max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(len(header))
        ]

        def fmt(row: list[str]) -> str:
            return "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))

        lines.append(fmt(header))
        lines += [fmt(row) for row in rows]
    ratios = [
        f"rmtrain packed / TRL: {_fmt_ratio(results.get('rmtrain_packed'), results.get('trl'))}",
        f"rmtrain packed / ceiling: {_fmt_ratio(results.get('rmtrain_packed'), results.get('ceiling'))}",
        f"rmtrain padded / TRL: {_fmt_ratio(results.get('rmtrain_padded'), results.get('trl'))}",
    ]
    if "trl_grouped" in results:
        ratios.append(f"rmtrain padded / TRL + group_by_length: "
                      f"{_fmt_ratio(results.get('rmtrain_padded'), results.get('trl_grouped'))}")  # fmt: skip
    lines.append("")
    lines.append(("Ratios of real tokens/s: " if markdown else "ratios (real tokens/s): ") + "; ".join(ratios))
    return lines


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


def write_docs(path: Path, all_results: list[dict], info: dict, settings: dict, command: str) -> None:
    lines = [
        "# Training throughput: rmtrain against TRL and the bare model",
        "",
        "Written by `tools/bench_throughput.py --write-docs`; re-run the command below to reproduce.",
        "",
        "Four arms train the same random-init Llama reward model on the same tokenised pairs:",
        "",
        "- **rmtrain packed**: `rmtrain train` with `use_varlen_attn=True`; whole pairs packed into bins of at most",
        "  `max_packed_length` tokens (chosen so that a bin holds about P pairs), one bin per optimizer step, no padding.",
        "- **rmtrain padded**: the same config with `use_varlen_attn=False`, P pairs per step, right-padded batches",
        "  of similar length (`LengthGroupedSampler`).",
        "- **TRL RewardTrainer** (trl {trl}): `LlamaForSequenceClassification(num_labels=1)`, P pairs per step,".format(
            **info
        ),
        "  given the same token ids (pre-tokenised `chosen_ids` / `rejected_ids`), TRL's collator and random batches.",
        "- **ceiling**: the bare model's forward + backward + AdamW step on fixed-shape `[2P, L]` batches of real",
        "  tokens cut from the same data (L = the mean sequence length), same value head and loss, no data pipeline.",
        "- **TRL + group_by_length** (only when run with `--arms ...,trl_grouped`): TRL with transformers'",
        "  length-grouped sampler instead of random batches.",
        "",
        "Shared: tokenizer (byte-level BPE, vocab {vocab}, trained on the two data sets, ChatML template, a pad",
        "and a reward token), weights, `max_length` {max_length}, AdamW (lr {lr}, constant, clip 1.0), {precision},",
        "{threads} torch threads, no gradient checkpointing, no evaluation, no checkpoint saving, no external logging,",
        "no reward centering, TRL's fused AdamW replaced by `torch.optim.AdamW`. Each arm runs in its own process.",
        "",
        "Real tokens/s counts non-pad tokens over optimizer steps {first}..{last} (the first {warmup} steps,",
        "model build and data tokenising are excluded). Padded fraction = pad slots / all token slots. Peak MiB is the",
        "maximum RSS of the arm's process (imports, data and model included). tokens/seq is the mean real length of",
        "the sequences trained in the window: arms draw different pairs, so it shows how comparable the windows are.",
        "A median s/step far from the mean s/step means the window was disturbed (other load) or uneven.",
        "",
    ]
    lines = [
        line.format(
            vocab=settings["vocab_size"], max_length=settings["max_length"], lr=settings["lr"],
            precision=info["precision"], threads=info["threads"], first=settings["warmup"] + 1,
            last=settings["warmup"] + settings["steps"], warmup=settings["warmup"],
        ) if "{" in line else line
        for line in lines
    ]  # fmt: skip
    for entry in all_results:
        lines.append(f"## {entry['size']} model ({entry['params'] / 1e6:.1f}M parameters), {entry['dataset']}")
        lines.append("")
        lines.append(
            f"{entry['pairs']} pairs, {entry['tokens']:,} tokens (mean pair {entry['tokens'] / entry['pairs']:.0f}); "
            f"P = {settings['pairs_per_step']} pairs per step; max_packed_length = {entry['max_packed_length']} "
            f"({entry['bin_pairs']:.2f} pairs per bin over the whole data set)."
        )
        lines.append("")
        lines += format_table(entry["results"], markdown=True)
        for key in ("token_check", "settings_check"):
            if entry.get(key):
                lines += ["", entry[key]]
        lines.append("")
    lines += [
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; {info['threads']} torch threads per arm",
        (
            f"- Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
            f"trl {info['trl']}, mmengine {info['mmengine']}"
        ),
        f"- Precision: {info['precision']}",
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def settings_check(results: dict) -> str:
    """What each arm actually ran with, read back from the trainer objects after training."""
    parts = []
    for arm in ALL_ARMS:
        checks = (results.get(arm) or {}).get("checks")
        if checks:
            parts.append(
                f"{ARM_TITLES[arm]}: autocast {checks['autocast']}, activation checkpointing "
                f"{'ON' if checks['grad_checkpointing'] else 'off'}, {checks['optimizer']}, {checks['threads']} threads, "
                f"attention {checks['attention']}"
                + (f", rows of {checks['row_len']} tokens" if "row_len" in checks else "")
            )
    loads = ", ".join(f"{ARM_TITLES[arm]} {r['load_before']:.1f}" for arm, r in results.items() if "load_before" in r)
    return ("Settings read back: " + "; ".join(parts) + "." if parts else "") + (
        f" Load average (1 min) when each arm started: {loads}." if loads else ""
    )


def token_check(results: dict, reference: dict) -> str:
    """Every arm must train on the same token sequences: same count, same pairs, same fingerprint."""
    expected = (reference["tokens"], reference["pairs"], reference["digest"])
    seen = {
        arm: (r.get("dataset_tokens"), r.get("dataset_pairs"), r.get("token_digest"))
        for arm, r in results.items() if r.get("ok")
    }  # fmt: skip
    mismatched = {arm: v for arm, v in seen.items() if v != expected}
    if mismatched:
        return (
            f"Token check FAILED: reference {reference['tokens']} tokens in {reference['pairs']} pairs "
            f"(fingerprint {reference['digest']}); "
            + ", ".join(f"{ARM_TITLES[arm]}: {t} tokens in {p} pairs ({d})" for arm, (t, p, d) in mismatched.items())
        )
    return (
        f"Token check: every arm that ran ({', '.join(ARM_TITLES[arm] for arm in seen)}) trained on the same "
        f"{reference['tokens']:,} tokens in {reference['pairs']} pairs (identical token ids, fingerprint "
        f"{reference['digest']})."
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
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
    parser.add_argument("--write-docs", action="store_true", help="write the tables to --docs-path")
    parser.add_argument("--docs-path", default=str(REPO_ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--_arm", help=argparse.SUPPRESS)
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


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._arm:
        return arm_main(args._arm)

    from rmtrain.engine.precision import bf16_supported

    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and bf16_supported("cpu"))
    precision = "bf16 autocast (fp32 weights)" if bf16 else "fp32"
    data_root = Path(args.data_root)
    work_dir = Path(args.work_dir)
    cache_dir = work_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = "python tools/bench_throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv)
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
                    dtype=args.dtype, bf16=bf16, threads=args.threads,
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
                    steps=args.steps, pairs_per_step=args.pairs_per_step)  # fmt: skip
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
