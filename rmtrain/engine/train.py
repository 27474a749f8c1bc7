"""`rmtrain train`: config -> preference data -> reward model -> mmengine Runner -> work dir.

Read top to bottom: load and check the config, settle the work dir, seed and resume point, apply
the library workarounds, build the data first (bad records fail before a model is loaded), then
hand everything to mmengine's Runner.
"""

import os
import random
from pathlib import Path

from mmengine.runner import Runner

from rmtrain.builder import build
from rmtrain.engine.compat import allow_trusted_checkpoint_loading, load_checkpoint_file
from rmtrain.engine.config import load_config
from rmtrain.engine.hooks import GradientAccumulationStateHook
from rmtrain.engine.log_processor import RewardLogProcessor
from rmtrain.errors import ConfigError

NOT_READY = "is not ready yet in this version of rmtrain; train on one device (no --launcher/--deepspeed)"


def _check_launch(launcher: str, deepspeed: str | None) -> None:
    if launcher != "none":
        raise ConfigError(f"--launcher {launcher} {NOT_READY}")
    if deepspeed:
        raise ConfigError(f"--deepspeed {NOT_READY}")
    for variable in ("NPROC_PER_NODE", "NNODES"):
        if int(os.environ.get(variable, "1")) > 1:
            raise ConfigError(f"{variable}>1 (multi-process training) {NOT_READY}")


def default_work_dir(config_path: str) -> str:
    return os.path.join("work_dirs", Path(config_path).stem)


def find_resume_checkpoint(resume: str | None, work_dir: str) -> str | None:
    """--resume auto -> the work dir's last complete checkpoint (None if there is none); PATH -> PATH."""
    if resume is None:
        return None
    if resume != "auto":
        if not os.path.isfile(resume):
            raise ConfigError(f"--resume {resume}: no such checkpoint file")
        return resume
    pointer = os.path.join(work_dir, "last_checkpoint")
    if not os.path.isfile(pointer):
        return None
    # mmengine writes this pointer only after a checkpoint file is completely saved.
    path = Path(pointer).read_text().strip()
    return path if os.path.isfile(path) else None


def checkpoint_seed(path: str) -> int | None:
    checkpoint = load_checkpoint_file(path, [os.path.dirname(path)])
    return checkpoint.get("meta", {}).get("seed")


def train(
    config: str,
    work_dir: str | None = None,
    resume: str | None = None,
    seed: int | None = None,
    cfg_options: dict | None = None,
    launcher: str = "none",
    deepspeed: str | None = None,
) -> Runner:
    _check_launch(launcher, deepspeed)
    cfg = load_config(config, cfg_options)
    work_dir = work_dir or cfg.get("work_dir") or default_work_dir(cfg.filename)
    os.makedirs(work_dir, exist_ok=True)

    resume_from = find_resume_checkpoint(resume, work_dir)
    allow_trusted_checkpoint_loading([work_dir] + ([os.path.dirname(resume_from)] if resume_from else []))
    # The sampler's shuffle order comes from the seed: a resumed run must reuse the one it started with.
    randomness = dict(cfg.get("randomness") or {})
    if seed is None and resume_from:
        seed = checkpoint_seed(resume_from)
    if seed is None:
        seed = randomness.get("seed")
    if seed is None:
        seed = random.randint(0, 2**31 - 1)
    randomness["seed"] = seed
    cfg.randomness = randomness

    # Data first: a bad record or reward token fails in seconds, before a large model is loaded.
    train_dataset = build(cfg.train_dataloader.dataset)
    train_dataloader = dict(cfg.train_dataloader)
    train_dataloader["dataset"] = train_dataset

    custom_hooks = list(cfg.get("custom_hooks") or []) + [GradientAccumulationStateHook()]
    runner = Runner(
        model=cfg.model,
        work_dir=work_dir,
        train_dataloader=train_dataloader,
        train_cfg=cfg.train_cfg,
        optim_wrapper=cfg.optim_wrapper,
        param_scheduler=cfg.get("param_scheduler"),
        default_hooks=cfg.get("default_hooks"),
        custom_hooks=custom_hooks,
        log_processor=cfg.get("log_processor") or dict(type=RewardLogProcessor, by_epoch=False),
        visualizer=cfg.get("visualizer"),
        env_cfg=cfg.get("env_cfg", dict(dist_cfg=dict(backend="nccl"))),
        randomness=randomness,
        resume=resume_from is not None,
        load_from=resume_from,
        log_level=cfg.get("log_level", "INFO"),
        launcher="none",
        cfg=cfg,
    )
    runner.logger.info(train_dataset.summary_text())
    if resume is not None and resume_from is None:
        runner.logger.info(f"--resume auto: no checkpoint in {work_dir} yet, starting from the beginning")
    runner.train()
    return runner
