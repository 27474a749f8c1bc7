"""The two arms: `rmtrain train` of the demo recipe, and TRL's RewardTrainer, on the same pairs in the same order.

The order: the recipe's own sampler (rmtrain.data.LengthGroupedSampler, 16-pair batches of similar length)
seeded with the run seed, computed once here (`training_order`). rmtrain gets the seed through
cfg-options (`train_dataloader.sampler.seed`) and so walks exactly that order; TRL gets the records
already in that order and a sequential sampler. Same budget in both: one pass, batch 16, AdamW (lr, betas,
weight decay of the recipe), linear warm-up over 5% of the steps then cosine to 0, clipping at the recipe's
max_norm, bf16 autocast where the CPU has it, the recipe's max_length, no activation checkpointing.

rmtrain is scored through its own scoring rule (rmtrain.scoring via rmtrain.evaluation.evaluate.score_pairs,
on pairs built by build_preference_dataset from the final checkpoint); TRL the way it reads scores (its own
tokenising of the conversational records, its collator, the sequence-classification logits). Both score
under the same bf16 autocast they trained with.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tools.quality.suites import RECIPE, data_options, eval_max_length, eval_sets
from tools.quality.variants import effective_settings, variant_options

REPO_ROOT = Path(__file__).resolve().parents[2]
WARMUP_RATIO = 0.05  # the recipe's warmup_ratio (a settings variable, so not readable from the loaded config)
SCORE_BATCH_PAIRS = 16
# The same work in both arms' step times: TRL's arm validates and saves nothing before its last step, so
# rmtrain's arm does not either. The recipe validates halfway and saves every 50 steps; mmengine's timer
# counts a save (and the end of a validation) in the next step's time. Training itself is unchanged: the
# final checkpoint (saved after the last timed step, as the recipe does) is the one scored.
SAME_WORK_OPTIONS = {"train_cfg.val_interval": 10**6, "default_hooks.checkpoint.interval": 10**6}
# The same window in both arms' step times: every step's own time (mmengine logs and smooths over 10 steps
# by default; a run of 19 steps then logged steps 1-10 only), so both arms are timed over steps 2..N.
PER_STEP_LOG_OPTIONS = {"default_hooks.logger.interval": 1, "log_processor.window_size": 1}
LAST_WINDOW_STEPS = 10  # the reported last grad norm and margin: means over the last 10 steps


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mean_step_seconds(step_times: list[float]) -> float | None:
    """Mean time of steps 2..N: the first step's time holds the start of the training loop in either trainer."""
    return _mean(step_times[1:])


def recipe_config(suite: str, options: dict):
    from rmtrain.config import load_config

    return load_config(RECIPE, {**data_options(suite), **options})


def training_order(train_pairs, batch_size: int, seed: int) -> list[int]:
    """Positions of the train pairs in the order the recipe's sampler, seeded with `seed`, yields them."""
    from rmtrain.data import LengthGroupedSampler

    sampler = LengthGroupedSampler(train_pairs, batch_size=batch_size, seed=seed)
    sampler.set_epoch(0)
    return list(iter(sampler))


def ordered_records(source_records: list[dict], train_pairs, order: list[int]) -> list[dict]:
    """The source records of the train pairs at `order` (what TRL gets, in that order)."""
    record_index = list(train_pairs.pairs["record_index"])
    keys = ("prompt", "chosen", "rejected")
    return [{key: source_records[record_index[position]][key] for key in keys} for position in order]


def split_records(cfg, split_dataloader: str) -> tuple[object, list[dict]]:
    """(the PreferenceDataset the recipe builds for a dataloader, its records in the data set's order)."""
    from rmtrain.builder import build

    dataset_cfg = cfg[split_dataloader].dataset
    pairs = build(dataset_cfg)
    source = build(dataset_cfg.dataset).to_list()
    records = ordered_records(source, pairs, list(range(len(pairs))))
    return pairs, records


def _score_stats(chosen: list[float], rejected: list[float]) -> dict:
    import statistics

    scores = chosen + rejected
    return {
        "pairs": len(chosen),
        "accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(chosen),  # a tie counts as wrong
        "score_std": statistics.pstdev(scores),
        "score_mean": statistics.fmean(scores),
        "margin_mean": statistics.fmean(c - r for c, r in zip(chosen, rejected)),
    }


def _bf16() -> bool:
    from rmtrain.engine.precision import bf16_supported

    return bf16_supported("cpu")


# ============================================================================ rmtrain


def _option_text(value) -> str:
    return "None" if value is None else str(value)


def _scalars(work_dir: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json")))
    if not files:
        return []
    with open(files[-1]) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def run_rmtrain(suite: str, variant: str, seed: int, run_dir: str) -> dict:
    """Train the recipe with the variant's cfg-options in a subprocess, then score the final checkpoint."""
    import torch

    from rmtrain.builder import build
    from rmtrain.checkpoints import load_model_weights, read_model_state_dict
    from rmtrain.data import build_preference_dataset
    from rmtrain.evaluation.evaluate import score_pairs

    options = {**variant_options(variant), "train_dataloader.sampler.seed": seed}
    cfg = recipe_config(suite, options)
    command = [sys.executable, "-m", "rmtrain.cli", "train", RECIPE, "--work-dir", run_dir, "--seed", str(seed)]
    cfg_options = {**data_options(suite), **options, **SAME_WORK_OPTIONS, **PER_STEP_LOG_OPTIONS}
    command += ["--cfg-options", *(f"{k}={_option_text(v)}" for k, v in cfg_options.items())]
    os.makedirs(run_dir, exist_ok=True)
    started = time.perf_counter()
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - started

    with open(os.path.join(run_dir, "last_checkpoint")) as handle:
        checkpoint = handle.read().strip()
    reward_model = build(cfg.model)
    load_model_weights(reward_model, read_model_state_dict(checkpoint), checkpoint)
    reward_model.eval()
    tokenizer = build(cfg.train_dataloader.dataset.tokenizer)
    pad_token_id = cfg.train_dataloader.collate_fn.pad_token_id
    dataset_cfg = cfg.train_dataloader.dataset

    def score(pairs) -> dict:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_bf16()):
            chosen, rejected = score_pairs(
                reward_model.model, reward_model.v_head, pairs, SCORE_BATCH_PAIRS, pad_token_id, "cpu"
            )
        return _score_stats(chosen, rejected)

    import datasets

    metrics = {"val": score(split_records(cfg, "val_dataloader")[0])}
    for name, records in eval_sets(suite).items():
        pairs = build_preference_dataset(
            dataset=datasets.Dataset.from_list(records),
            tokenizer=tokenizer,
            max_length=eval_max_length(suite, dataset_cfg.max_length),
            dataset_map_fn=None,
            is_dpo=False,
            is_reward=True,
            reward_token_id=dataset_cfg.get("reward_token_id"),
            chat_template=dataset_cfg.get("chat_template"),
        )
        metrics[name] = score(pairs)

    train_rows = [row for row in _scalars(run_dir) if "grad_norm" in row]  # one row per step
    last_window = train_rows[-LAST_WINDOW_STEPS:]
    for path in glob.glob(os.path.join(run_dir, "*.pth")):
        os.remove(path)  # ~1.6 GB each; the scores are kept instead
    return {
        "metrics": metrics,
        "settings": effective_settings(cfg),
        "train": {
            "steps": train_rows[-1]["iter"] if train_rows else None,
            "step_s": mean_step_seconds([row["time"] for row in train_rows]),
            "wall_s": wall,
            "last_grad_norm": _mean([row["grad_norm"] for row in last_window]),
            "grad_norms": [row["grad_norm"] for row in train_rows],
            "last_margin": _mean([row["chosen_score_mean"] - row["rejected_score_mean"] for row in last_window]),
        },
        "command": " ".join(command[1:]),
    }


# ============================================================================ TRL


def trl_spec(suite: str, seed: int, run_dir: str) -> dict:
    """Everything the TRL subprocess needs: the ordered train records, the eval sets, the recipe's budget."""
    from rmtrain.assets import smollm2_135m_instruct

    cfg = recipe_config(suite, {"train_dataloader.sampler.seed": seed})
    train_pairs, train_source = split_records(cfg, "train_dataloader")
    batch_size = cfg.train_dataloader.batch_size
    order = training_order(train_pairs, batch_size, seed)
    records = [train_source[position] for position in order]
    optimizer = cfg.optim_wrapper.optimizer
    steps = len(order) // batch_size
    return {
        "model_dir": smollm2_135m_instruct(),
        "run_dir": run_dir,
        "seed": seed,
        "train_records": records,
        "eval_sets": {"val": split_records(cfg, "val_dataloader")[1], **eval_sets(suite)},
        "batch_size": batch_size,
        "steps": steps,
        "warmup_steps": max(1, round(WARMUP_RATIO * steps)),
        "lr": optimizer.lr,
        "betas": list(optimizer.betas),
        "weight_decay": optimizer.weight_decay,
        "max_norm": cfg.optim_wrapper.clip_grad.max_norm,
        "max_length": cfg.train_dataloader.dataset.max_length,
        "bf16": _bf16(),
    }


def run_trl(suite: str, seed: int, run_dir: str) -> dict:
    os.makedirs(run_dir, exist_ok=True)
    spec_path = os.path.join(run_dir, "spec.json")
    with open(spec_path, "w") as handle:
        json.dump(trl_spec(suite, seed, run_dir), handle)
    started = time.perf_counter()
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        command = [sys.executable, "-m", "tools.quality.arms", spec_path]
        subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(os.path.join(run_dir, "result.json")) as handle:
        result = json.load(handle)
    result["train"]["wall_s"] = time.perf_counter() - started
    return result


def in_order_reward_trainer():
    """TRL's RewardTrainer, walking the train set in the order given (the harness ordered it) instead of shuffling."""
    from torch.utils.data import SequentialSampler
    from trl import RewardTrainer

    class InOrderRewardTrainer(RewardTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    return InOrderRewardTrainer


def step_end_times_callback():
    from transformers import TrainerCallback

    class StepEndTimes(TrainerCallback):
        """Each optimizer step's time, from the end of the one before (the first: from the start of training)."""

        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def step_times(self) -> list[float]:
            return [end - start for start, end in zip(self.ends, self.ends[1:])]

    return StepEndTimes()


def build_trl_trainer(spec: dict, output_dir: str, optim: str = "adamw_torch"):
    """RewardTrainer on a fresh SmolLM2 sequence classifier, with the spec's budget, walking its records in order."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig

    set_seed(spec["seed"])  # the score head is drawn when the model is built
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model_dir"], num_labels=1, dtype=torch.float32, attn_implementation="sdpa"
    )
    args = RewardConfig(
        output_dir=output_dir,
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=spec["lr"],
        lr_scheduler_type="cosine",
        warmup_steps=spec["warmup_steps"],
        weight_decay=spec["weight_decay"],
        adam_beta1=spec["betas"][0],
        adam_beta2=spec["betas"][1],
        max_grad_norm=spec["max_norm"],
        optim=optim,  # the harness: torch.optim.AdamW, as rmtrain's recipe builds it
        bf16=spec["bf16"],
        activation_checkpointing=False,  # TRL recomputes activations by default; the recipe does not (same math)
        max_length=spec["max_length"],
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=True,
        seed=spec["seed"],
        data_seed=spec["seed"],
    )
    return in_order_reward_trainer()(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(spec["train_records"]),
        processing_class=tokenizer,
    )


def trl_main(spec_path: str) -> None:
    """The TRL arm, in its own process: train with RewardTrainer, then score every eval set."""
    import datasets
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    with open(spec_path) as handle:
        spec = json.load(handle)

    trainer = build_trl_trainer(spec, os.path.join(spec["run_dir"], "trl_out"))
    tokenizer = trainer.processing_class
    if len(trainer.train_dataset) != len(spec["train_records"]):
        raise SystemExit(f"TRL dropped pairs longer than max_length: {len(trainer.train_dataset)} left")
    step_ends = step_end_times_callback()
    trainer.add_callback(step_ends)
    trainer.train()

    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    trainer.args.max_length = None  # score whole eval conversations (the suites keep only ones that fit)
    model = trainer.model.eval()
    metrics = {}
    for name, records in spec["eval_sets"].items():
        prepared = trainer._prepare_dataset(datasets.Dataset.from_list(records), tokenizer, trainer.args, name)
        chosen, rejected = [], []
        rows = [prepared[i] for i in range(len(prepared))]
        for start in range(0, len(rows), SCORE_BATCH_PAIRS):
            batch = collator(rows[start : start + SCORE_BATCH_PAIRS])
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            c, r = torch.chunk(logits.float().squeeze(-1), chunks=2)
            chosen += c.tolist()
            rejected += r.tolist()
        metrics[name] = _score_stats(chosen, rejected)

    logs = [row for row in trainer.state.log_history if "grad_norm" in row]
    result = {
        "metrics": metrics,
        "settings": {"trl": __import__("trl").__version__, "lr": spec["lr"], "batch_size": spec["batch_size"]},
        "train": {
            "steps": trainer.state.global_step,
            "step_s": mean_step_seconds(step_ends.step_times()),
            "last_grad_norm": logs[-1]["grad_norm"] if logs else None,
            "grad_norms": [row["grad_norm"] for row in logs],
            "last_margin": logs[-1].get("margin") if logs else None,
        },
    }
    with open(os.path.join(spec["run_dir"], "result.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    trl_main(sys.argv[1])
