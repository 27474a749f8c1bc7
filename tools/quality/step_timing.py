"""Both trainers' training steps timed in one process, interleaved batch by batch, on the same batches.

    python -m tools.quality.step_timing --seed 0 --steps 30 [--arms rmtrain,trl,rmtrain_fused,trl_fused]

The harness (`python -m tools.quality`) runs its arms one after the other, each in its own process, so a
change in the machine's speed between them lands in their step times. Here every arm is built in this
process, and step k of every arm (the same 16 pairs: the recipe's seeded order, as the harness gives
both trainers) runs back to back, the arms' order rotating from step to step, so drift in the machine's
speed reaches every arm alike. What one arm's step is:

- rmtrain: the next batch from the recipe's data loader (its collate function), then
  `RewardModel.train_step` with the recipe's optimizer wrapper (autocast, loss, backward, clipping,
  AdamW step): what mmengine's training loop does per iteration, less its hooks and logging.
- TRL: the next batch from `RewardTrainer`'s data loader (its collator), then `training_step` (autocast
  through accelerate, TRL's loss and metrics, backward), clipping, the AdamW step and the scheduler step:
  what the Trainer's inner loop does per step, less its callbacks and logging.

Arms: `rmtrain` (the recipe's `torch.optim.AdamW`), `trl` (`optim="adamw_torch"`, as the harness pins
it), `rmtrain_fused` (the recipe with `AdamW(fused=True)`), `trl_fused` (`optim="adamw_torch_fused"`, the
Trainer's default with torch >= 2.8). Prints each arm's median and mean step time and the median of the
per-step ratios against the first arm, and names any arm whose steps held other real-token
counts than the first arm's. Training outcomes are not measured here (the harness does that).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tools.quality.arms import build_trl_trainer, recipe_config, trl_spec

ARMS = ("rmtrain", "trl", "rmtrain_fused", "trl_fused")


class RmtrainArm:
    def __init__(self, seed: int, fused: bool):
        from mmengine.optim import build_optim_wrapper
        from mmengine.runner import Runner, set_random_seed

        from rmtrain.builder import build

        cfg = recipe_config("generated", {"train_dataloader.sampler.seed": seed})
        if fused:  # a new key, which --cfg-options refuses (it checks keys against the recipe)
            cfg.optim_wrapper.optimizer.fused = True
        set_random_seed(seed)
        self.model = build(cfg.model)
        self.model.train()
        self.optim_wrapper = build_optim_wrapper(self.model, cfg.optim_wrapper)
        dataset = build(cfg.train_dataloader.dataset)
        self.batches = iter(Runner.build_dataloader(dict(cfg.train_dataloader, dataset=dataset), seed=seed))

    def step(self) -> int:
        batch = next(self.batches)
        self.model.train_step(batch, self.optim_wrapper)
        return int(batch["data"]["num_tokens"])


class TrlArm:
    def __init__(self, seed: int, fused: bool, run_dir: str):
        spec = trl_spec("generated", seed, run_dir)
        self.trainer = build_trl_trainer(spec, run_dir, optim="adamw_torch_fused" if fused else "adamw_torch")
        trainer = self.trainer
        trainer.create_optimizer_and_scheduler(num_training_steps=spec["steps"])
        # What Trainer.train does before its loop: accelerate wraps the forward in the bf16 autocast.
        trainer.model_wrapped = trainer.model = trainer.accelerator.prepare(trainer.model)
        trainer.optimizer = trainer.accelerator.prepare(trainer.optimizer)
        trainer.current_gradient_accumulation_steps = 1  # set by the loop per step; no accumulation here
        self.max_norm = spec["max_norm"]
        self.batches = iter(trainer.get_train_dataloader())

    def step(self) -> int:
        trainer = self.trainer
        batch = next(self.batches)
        trainer.model.train()
        trainer.training_step(trainer.model, batch)
        trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), self.max_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.model.zero_grad()
        return int(batch["attention_mask"].sum())


def build_arm(name: str, seed: int, run_dir: str):
    if name.startswith("rmtrain"):
        return RmtrainArm(seed, fused=name.endswith("_fused"))
    return TrlArm(seed, fused=name.endswith("_fused"), run_dir=f"{run_dir}/{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30, help="steps per arm (the first 2 are not counted)")
    parser.add_argument("--arms", default="rmtrain,trl", help=f"comma-separated, of: {', '.join(ARMS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run-dir", default="work_dirs/quality/step_timing")
    args = parser.parse_args()
    names = args.arms.split(",")
    unknown = sorted(set(names) - set(ARMS))
    if unknown:
        parser.error(f"unknown arms {unknown}: choose from {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    arms = {name: build_arm(name, args.seed, args.run_dir) for name in names}

    times = {name: [] for name in names}
    tokens = {name: [] for name in names}
    for step in range(args.steps):
        shift = step % len(names)  # rotate which arm goes first, so no arm always follows the same one
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            tokens[name].append(arms[name].step())
            times[name].append(time.perf_counter() - started)

    counted = slice(2, None)  # the first steps warm up kernels and the allocator
    first = names[0]
    print(f"seed {args.seed}, steps 3..{args.steps} of each arm, {args.threads} threads, interleaved in one process")
    print(f"| arm | median s/step | mean s/step | real tokens (counted steps) | median of per-step time / {first}'s |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        ratios = [t / f for t, f in zip(times[name][counted], times[first][counted])]
        print(
            f"| {name} | {statistics.median(times[name][counted]):.3f} | {statistics.fmean(times[name][counted]):.3f} "
            f"| {sum(tokens[name][counted]):,} | {statistics.median(ratios):.3f} |"
        )
    differing = [name for name in names if tokens[name] != tokens[first]]
    if differing:  # the arms should train the same pairs; a trainer's template may add or drop a token
        print(f"note: {', '.join(differing)} read other real-token counts per step than {first}")


if __name__ == "__main__":
    main()
