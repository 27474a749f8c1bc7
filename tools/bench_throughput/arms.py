"""The arms, each run in its own subprocess: `python -m tools.bench_throughput.arms SPEC.json`.

rmtrain_packed / rmtrain_padded train through `rmtrain.engine.train.train` with the config files in
configs/; trl and trl_grouped through trl.RewardTrainer; ceiling is the bare model in a plain loop.
"""

import json
import sys
import time
import traceback
from pathlib import Path

from .measure import activation_checkpointing, peak_rss_mib, set_threads, summarize_steps, token_digest
from .settings import CONFIG_DIR, LOG_INTERVAL, SEED
from .window import window_digest


def rmtrain_cfg_options(spec: dict, steps_file: Path) -> dict:
    """The shared inputs of an arm as --cfg-options of its config file (configs/rmtrain_*.py)."""
    dataset = "train_dataloader.dataset"
    options = {
        f"{dataset}.tokenizer.pretrained_model_name_or_path": spec["tokenizer_dir"],
        "model.llm.pretrained_model_name_or_path": spec["model_dir"],
        f"{dataset}.dataset.data_files": spec["data_file"],
        f"{dataset}.dataset_map_fn": spec["map_fn"],
        f"{dataset}.reward_token_id": spec["reward_token_id"],
        f"{dataset}.max_length": spec["max_length"],
        f"{dataset}.max_packed_length": spec["max_packed_length"],
        f"{dataset}.window_file": spec["window_file"],
        "train_dataloader.collate_fn.pad_token_id": spec["pad_token_id"],
        "optim_wrapper.dtype": spec["dtype"],
        "optim_wrapper.optimizer.lr": spec["lr"],
        "optim_wrapper.optimizer.betas": tuple(spec["betas"]),
        "optim_wrapper.optimizer.weight_decay": spec["weight_decay"],
        "optim_wrapper.clip_grad.max_norm": spec["max_norm"],
        "train_cfg.max_iters": spec["warmup"] + spec["steps"],
        "custom_hooks.0.out_file": str(steps_file),
        "default_hooks.logger.interval": LOG_INTERVAL,
        "log_processor.window_size": LOG_INTERVAL,
        "randomness.seed": SEED,
    }
    if spec.get("profile_step"):
        options["custom_hooks.0.profile_step"] = spec["profile_step"]
    if spec["arm"] == "rmtrain_padded":  # P pairs per step; the packed arm takes one row (a step's pairs) per step
        options["train_dataloader.batch_size"] = spec["pairs_per_step"]
    return options


def run_rmtrain_arm(spec: dict) -> dict:
    """The real `rmtrain train` path on this arm's config file, given the shared inputs as cfg-options."""
    from rmtrain.engine.train import train

    run_dir = Path(spec["run_dir"])
    steps_file = run_dir / "steps.json"
    train(
        str(CONFIG_DIR / f"{spec['arm']}.py"),
        work_dir=str(run_dir / "work_dir"),
        cfg_options=rmtrain_cfg_options(spec, steps_file),
    )
    return json.loads(steps_file.read_text())


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
    window = json.loads(Path(spec["window_file"]).read_text())
    # The data set the arms share (its fingerprint); TRL then trains the window's selection of it.
    dataset_tokens = sum(len(ids) for ids in pairs["chosen_ids"]) + sum(len(ids) for ids in pairs["rejected_ids"])
    digest = token_digest(pairs["chosen_ids"], pairs["rejected_ids"])
    dataset_pairs = len(pairs)
    grouped = spec["arm"] == "trl_grouped"
    if not grouped:  # the window's pairs in its order, sampled sequentially (trl_grouped: TRL's own sampler)
        pairs = pairs.select([i for step in window for i in step])
    if grouped:  # transformers' LengthGroupedSampler reads a "length" column (it cannot infer one here)
        pairs = pairs.map(lambda row: {"length": max(len(row["chosen_ids"]), len(row["rejected_ids"]))})

    class CountingCollator:
        """TRL's own collator; remembers every batch's real tokens, slots and pairs, in order."""

        def __init__(self, pad_token_id: int):
            self.inner = DataCollatorForPreference(pad_token_id=pad_token_id)
            self.batches: list[dict] = []
            self.collated: list[dict] = []

        def __call__(self, examples):
            batch = self.inner(examples)
            self.batches.append(
                {
                    "real": int(batch["attention_mask"].sum()),
                    "slots": int(batch["input_ids"].numel()),
                    "pairs": batch["input_ids"].shape[0] // 2,
                }
            )
            self.collated.append(batch)  # fingerprinted after training
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
        **(
            dict(train_sampling_strategy="group_by_length", remove_unused_columns=False)
            if grouped
            else dict(train_sampling_strategy="sequential")
        ),  # fmt: skip
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
    # TRL drops (does not truncate) pairs with a side longer than max_length; rmtrain's ids are already
    # cut to max_length, so none should go: a drop would shift the window, and is reported.
    dropped_by_trl = len(pairs) - len(prepared)
    trainer.train()
    checks = {
        "autocast": trainer.accelerator.mixed_precision,
        "grad_checkpointing": activation_checkpointing(trainer.model),
        "optimizer": type(
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        ).__name__,
        "threads": torch.get_num_threads(),
        "attention": trainer.model.config._attn_implementation,
    }
    from .hooks import batch_sequences
    from .window import step_digest

    steps = [step_digest(batch_sequences(batch)) for batch in collator.collated[: len(step_times.records)]]
    return {"records": step_times.records, "dataset_tokens": dataset_tokens, "dataset_pairs": dataset_pairs,
            "token_digest": digest, "step_digests": None if grouped else steps, "dropped_by_trl": dropped_by_trl,
            "checks": checks}  # fmt: skip


# ============================================================================ ceiling arm


def run_ceiling_arm(spec: dict) -> dict:
    import datasets
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import LlamaModel

    pairs = datasets.load_from_disk(spec["pairs_dir"])
    window = json.loads(Path(spec["window_file"]).read_text())
    chosen, rejected = pairs["chosen_ids"], pairs["rejected_ids"]
    measured = window[spec["warmup"] :]  # rows of the measured window's tokens, at its mean sequence length
    stream = [t for step in measured for i in step for t in (*chosen[i], *rejected[i])]
    num_sequences = sum(2 * len(step) for step in measured)
    row_len = max(2, round(len(stream) / num_sequences))
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
    dataset_tokens = sum(len(c) + len(r) for c, r in zip(chosen, rejected))
    return {"records": records, "dataset_tokens": dataset_tokens, "dataset_pairs": len(pairs), "token_digest": digest,
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
        steps = result.pop("step_digests", None)
        if steps is not None:  # the sequences of the measured steps, in order
            result["window_digest"] = window_digest(steps[spec["warmup"] : spec["warmup"] + spec["steps"]])
    except BaseException as error:  # noqa: BLE001  report any failure; the parent goes on with the other arms
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    result["peak_rss_mib"] = peak_rss_mib()
    result_path.write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(arm_main(sys.argv[1]))
