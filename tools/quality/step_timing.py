"""Both trainers' training steps timed in one process, interleaved batch by batch, on the same batches.

    python -m tools.quality.step_timing --seed 0 --steps 30 [--arms rmtrain,trl,rmtrain_fused,trl_fused]

The harness (`python -m tools.quality`) runs its arms one after the other, each in its own process, so a
change in the machine's speed between them lands in their step times. Here every arm is built in this
process, and step k of every arm (the same 16 pairs: the recipe's seeded order, as the harness gives
both trainers) runs back to back, the arms' order rotating from step to step, so drift in the machine's
speed reaches every arm alike. What one arm's step is:

- rmtrain: the next batch from the recipe's data loader (its collate function), then what
  `RewardModel.train_step` does with the recipe's optimizer wrapper (autocast, loss, backward, clipping,
  AdamW step): what mmengine's training loop does per iteration, less its hooks and logging.
- TRL: the next batch from `RewardTrainer`'s data loader (its collator), then what `training_step` does
  (autocast through accelerate, TRL's loss and metrics, backward), clipping, the AdamW step and the
  scheduler step: what the Trainer's inner loop does per step, less its callbacks and logging.

Each step is timed in phases (data, forward with the loss, backward, clipping with the optimizer step,
zero_grad): the two trainers' step functions are written out here call by call, as their libraries
run them, so that a gap between the arms shows in the phase it comes from.

Arms: `rmtrain` (the recipe's `torch.optim.AdamW`), `trl` (`optim="adamw_torch"`, as the harness pins
it), `rmtrain_fused` (the recipe with `AdamW(fused=True)`), `trl_fused` (`optim="adamw_torch_fused"`, the
Trainer's default with torch >= 2.8). Prints each arm's median and mean step time and the median of the
per-step ratios against the first arm, then each phase's median, and names any arm whose steps held
other real-token counts than the first arm's. Training outcomes are not measured here (the harness
does that).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tools.quality.arms import build_trl_trainer, recipe_config, trl_spec

ARMS = ("rmtrain", "trl", "rmtrain_fused", "trl_fused")


PHASES = ("data", "forward", "backward", "clip + optimizer", "zero_grad")


class PhaseClock:
    """Seconds since the last lap, recorded under the phase just ended."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self._last = now


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

    def step(self, clock: PhaseClock) -> int:
        """`RewardModel.train_step` (mmengine's BaseModel.train_step and update_params), phase by phase."""
        model, optim_wrapper = self.model, self.optim_wrapper
        batch = next(self.batches)
        clock.lap("data")
        with optim_wrapper.optim_context(model):
            data = model.data_preprocessor(batch, True)
            losses = model._run_forward(data, mode="loss")
        loss, _log_vars = model.parse_losses(losses)
        loss = optim_wrapper.scale_loss(loss)
        clock.lap("forward")
        optim_wrapper.backward(loss)
        clock.lap("backward")
        optim_wrapper.step()  # clipping, then the AdamW step
        clock.lap("clip + optimizer")
        optim_wrapper.zero_grad()
        clock.lap("zero_grad")
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

    def step(self, clock: PhaseClock) -> int:
        """`Trainer.training_step` (its forward, then backward), clipping, AdamW and scheduler steps, phase by phase."""
        trainer = self.trainer
        batch = next(self.batches)
        clock.lap("data")
        trainer.model.train()
        inputs = trainer._prepare_inputs(batch)
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, inputs)
        del inputs
        loss = loss / trainer.current_gradient_accumulation_steps
        clock.lap("forward")
        trainer.accelerator.backward(loss)
        clock.lap("backward")
        trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), self.max_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        clock.lap("clip + optimizer")
        trainer.model.zero_grad()
        clock.lap("zero_grad")
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

    phases = {name: {phase: [] for phase in PHASES} for name in names}
    tokens = {name: [] for name in names}
    for step in range(args.steps):
        shift = step % len(names)  # rotate which arm goes first, so no arm always follows the same one
        for name in names[shift:] + names[:shift]:
            clock = PhaseClock()
            tokens[name].append(arms[name].step(clock))
            for phase in PHASES:
                phases[name][phase].append(clock.seconds[phase])
    times = {name: [sum(step_phases) for step_phases in zip(*phases[name].values())] for name in names}

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
    print(f"\nmedian seconds per phase (steps 3..{args.steps}); in brackets, over {first}'s median")
    print("| arm | " + " | ".join(PHASES) + " |")
    print("|---|" + "---:|" * len(PHASES))
    for name in names:
        cells = []
        for phase in PHASES:
            median = statistics.median(phases[name][phase][counted])
            reference = statistics.median(phases[first][phase][counted])
            cells.append(f"{median:.3f} ({median / reference:.2f})" if reference > 0 else f"{median:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    differing = [name for name in names if tokens[name] != tokens[first]]
    if differing:  # the arms should train the same pairs; a trainer's template may add or drop a token
        print(f"note: {', '.join(differing)} read other real-token counts per step than {first}")


if __name__ == "__main__":
    main()
