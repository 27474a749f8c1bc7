"""`rmtrain train`: config -> preference data -> reward model -> mmengine Runner -> work dir.

Read top to bottom: load and check the config, settle the work dir, seed and resume point, apply
the library workarounds, build the data first (bad records fail before a model is loaded), then
hand everything to mmengine's Runner (or, with --deepspeed, to its FlexibleRunner with a
DeepSpeedStrategy: same data, hooks, logs and seed; DeepSpeed owns the optimizer step).
"""

import logging
import os
import random
import tempfile
from pathlib import Path

import torch
from mmengine.logging import print_log
from mmengine.runner import FlexibleRunner, Runner, set_random_seed

from rmtrain.builder import build
from rmtrain.checkpoints import (
    check_deepspeed_folder,
    checkpoint_seed,
    find_resume_checkpoint,
    is_deepspeed_checkpoint,
    use_safe_reader_for_mmengine,
)
from rmtrain.compat import ddp_wrapper_config, flexible_runner_class
from rmtrain.config import load_config
from rmtrain.data.preference_dataset import largest_token_id
from rmtrain.engine.checkpoint_hook import AtomicCheckpointHook
from rmtrain.engine.console import FILE_ONLY, built_line, finished_lines, quiet_console_runner
from rmtrain.engine.deepspeed import (
    check_quantized_trunk_stage,
    deepspeed_runner_kwargs,
    match_partitioned_dtype,
    zero3_construction,
)
from rmtrain.engine.distributed import is_distributed, on_rank0_then_share, world_size
from rmtrain.engine.hooks import GradientAccumulationStateHook, ResumeFitsModelHook, ZeroGradientStopHook
from rmtrain.engine.launch import free_port, init_distributed, torchrun_requested
from rmtrain.engine.log_processor import RewardLogProcessor
from rmtrain.engine.memory import check_gpu_memory
from rmtrain.engine.sequence_parallel import setup_sequence_parallel, sharded_by_group
from rmtrain.engine.validation import check_validation_config, validation_loop_config
from rmtrain.errors import ConfigError


def _check_launch(launcher: str) -> None:
    if launcher == "none" and torchrun_requested():
        raise ConfigError("NPROC_PER_NODE/NNODES > 1: start training through the `rmtrain train` command")


def _single_process_group_environment() -> None:
    """DeepSpeed needs a process group even in one process: the environment of a one-process torchrun."""
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
    )  # fmt: skip


def default_work_dir(config_path: str) -> str:
    return os.path.join("work_dirs", Path(config_path).stem)


def _check_resume_kind(resume_from: str | None, deepspeed: str | None) -> None:
    if resume_from and is_deepspeed_checkpoint(resume_from) != bool(deepspeed):
        written_by = "a DeepSpeed run" if deepspeed is None else "a run without DeepSpeed"
        raise ConfigError(
            f"{resume_from} was written by {written_by}; resume it "
            f"{'with' if deepspeed is None else 'without'} --deepspeed"
        )


def _warn(message: str) -> None:
    print_log(message, logger="current", level=logging.WARNING)


def _share_seed(seed: int | None) -> int:
    """Every rank must shuffle with the same seed: rank 0 picks one when none is given."""
    return on_rank0_then_share(lambda: seed if seed is not None else random.randint(0, 2**31 - 1))


def _align_checkpoints_to_accumulation(cfg, logger_print, deepspeed: bool) -> None:
    """In multi-process and DeepSpeed runs, save only at accumulation-window ends.

    Gradients accumulated inside a window are local to each rank (not yet all-reduced) and only
    rank 0 writes checkpoints, so a mid-window checkpoint could not resume exactly. DeepSpeed keeps
    them in its own buffers, which its checkpoints leave out, even in one process.
    """
    accumulation = cfg.optim_wrapper.get("accumulative_counts", 1)
    checkpoint = (cfg.get("default_hooks") or {}).get("checkpoint")
    if (world_size() == 1 and not deepspeed) or accumulation <= 1 or not checkpoint or "interval" not in checkpoint:
        return
    interval = checkpoint["interval"]
    if interval % accumulation:
        aligned = (interval // accumulation + 1) * accumulation
        checkpoint["interval"] = aligned
        logger_print(
            f"checkpoint interval {interval} is not a multiple of accumulative_counts={accumulation}; "
            f"saving every {aligned} iterations so that checkpoints fall at window ends"
        )
    # A new best validation score saves the latest checkpoint again, at the validation's iteration.
    val_interval = cfg.train_cfg.get("val_interval")
    if checkpoint.get("save_best") and val_interval and val_interval % accumulation:
        aligned = (val_interval // accumulation + 1) * accumulation
        cfg.train_cfg["val_interval"] = aligned
        logger_print(
            f"val_interval {val_interval} is not a multiple of accumulative_counts={accumulation} and a new best "
            f"validation score saves a checkpoint; validating every {aligned} iterations instead"
        )


def _default_hooks(cfg) -> dict | None:
    """The config's default hooks, mmengine's CheckpointHook replaced by AtomicCheckpointHook with the same settings.

    A copy: the config itself (saved into every checkpoint as text) keeps naming CheckpointHook.
    """
    from mmengine.hooks import CheckpointHook

    hooks = cfg.get("default_hooks")
    checkpoint = (hooks or {}).get("checkpoint")
    if not checkpoint or checkpoint.get("type") not in (
        CheckpointHook,
        "CheckpointHook",
        "mmengine.hooks.CheckpointHook",
    ):
        return hooks
    return dict(hooks, checkpoint=dict(checkpoint, type=AtomicCheckpointHook))


def _check_work_dir(work_dir: str) -> None:
    """The work dir exists and takes files, before any data or model is built."""
    try:
        os.makedirs(work_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=work_dir, prefix=".write_test_"):
            pass
    except OSError as error:
        raise ConfigError(f"work dir {work_dir}: cannot write there ({error.strerror or error})") from None


def _check_vocabulary(runner, dataset) -> None:
    """Every token id of the data has a row in the model's embeddings (else: an IndexError at the first step)."""
    model = getattr(runner.model, "module", runner.model)
    trunk = getattr(model, "model", None)
    if trunk is None or not hasattr(trunk, "get_input_embeddings"):
        return
    rows = trunk.get_input_embeddings().num_embeddings
    largest = largest_token_id(dataset)
    if largest >= rows:
        raise ConfigError(
            f"the tokenizer gives token id {largest}, but the model's vocabulary has only {rows} entries "
            f"(vocab_size {rows}): use the model's own tokenizer, or a model config with vocab_size > {largest}"
        )


def _runner_class_and_kwargs(cfg, deepspeed: str | None, resume_from: str | None) -> tuple[type, dict]:
    """Runner with the config's optimizer wrapper (DDP in multi-process runs), or FlexibleRunner with DeepSpeed."""
    if deepspeed:
        # FlexibleRunner builds the model late, after its data loader has drawn from the random
        # generator: built here, right after seeding as Runner does, it starts from the same weights.
        # DeepSpeed counts every rank as data-parallel, also under sequence parallelism: its
        # train_batch_size then counts a pair once per rank of its group, and its gradient average over
        # all ranks is the one the sequence-parallel score sum expects (rmtrain.model.sequence_parallel).
        kwargs = deepspeed_runner_kwargs(deepspeed, cfg, world_size())
        set_random_seed(**cfg.randomness)
        with zero3_construction(kwargs["strategy"]["config"]):  # ZeRO-3: each rank builds only its partition
            model = build(cfg.model)
        match_partitioned_dtype(model)
        custom_hooks = list(cfg.get("custom_hooks") or []) + [ZeroGradientStopHook()]
        return flexible_runner_class(), dict(kwargs, model=model, custom_hooks=custom_hooks)
    if is_distributed():
        cfg.model_wrapper_cfg = ddp_wrapper_config(on_gpu=torch.cuda.is_available())
    # Saves and restores gradients accumulated mid-window (DeepSpeed runs save only at window ends).
    custom_hooks = list(cfg.get("custom_hooks") or []) + [GradientAccumulationStateHook(), ZeroGradientStopHook()]
    if resume_from:
        custom_hooks.append(ResumeFitsModelHook(resume_from))
    return Runner, dict(model=cfg.model, optim_wrapper=cfg.optim_wrapper, custom_hooks=custom_hooks)


def train(
    config: str,
    work_dir: str | None = None,
    resume: str | None = None,
    seed: int | None = None,
    cfg_options: dict | None = None,
    launcher: str = "none",
    deepspeed: str | None = None,
    trust_checkpoint: bool = False,
) -> Runner | FlexibleRunner:
    _check_launch(launcher)
    if deepspeed and launcher == "none":
        _single_process_group_environment()
        launcher = "pytorch"
    if launcher != "none":
        init_distributed(launcher)
    cfg = load_config(config, cfg_options)
    if deepspeed:
        check_quantized_trunk_stage(deepspeed, cfg)
    # Before any data or model: the groups exist when the model is built, the samplers shard by group.
    setup_sequence_parallel(cfg, world_size())
    work_dir = work_dir or cfg.get("work_dir") or default_work_dir(cfg.filename)
    _check_work_dir(work_dir)
    if torch.cuda.is_available():  # a launch that cannot hold the model states fails now, not at the first step
        check_gpu_memory(cfg, deepspeed, world_size(), _warn)

    resume_from = find_resume_checkpoint(resume, work_dir)
    _check_resume_kind(resume_from, deepspeed)
    use_safe_reader_for_mmengine(trust=trust_checkpoint)
    if resume_from and is_deepspeed_checkpoint(resume_from):
        check_deepspeed_folder(resume_from, trust=trust_checkpoint)  # DeepSpeed itself unpickles in full
    # The sampler's shuffle order comes from the seed: a resumed run must reuse the one it started with.
    randomness = dict(cfg.get("randomness") or {})
    if seed is None and resume_from:
        seed = checkpoint_seed(resume_from, trust=trust_checkpoint)
    if seed is None:
        seed = randomness.get("seed")
    randomness["seed"] = _share_seed(seed)
    cfg.randomness = randomness
    _align_checkpoints_to_accumulation(cfg, _warn, deepspeed=bool(deepspeed))
    validates = check_validation_config(cfg)

    # Data first: a bad record or reward token fails in seconds, before a large model is loaded.
    # Tokenised once, on rank 0, and shared with the other ranks.
    def build_train_dataset():
        dataset = build(cfg.train_dataloader.dataset)
        return dataset.in_memory() if is_distributed() else dataset

    train_dataset = on_rank0_then_share(build_train_dataset)
    train_dataloader = sharded_by_group(dict(cfg.train_dataloader, dataset=train_dataset))

    # Validation data: built and shared the same way, so bad validation records also fail early.
    validation = {}
    if validates:

        def build_val_dataset():
            dataset = build(cfg.val_dataloader.dataset)
            return dataset.in_memory() if is_distributed() else dataset

        val_dataset = on_rank0_then_share(build_val_dataset)
        validation = dict(
            val_dataloader=sharded_by_group(dict(cfg.val_dataloader, dataset=val_dataset)),
            val_evaluator=cfg.val_evaluator,
            val_cfg=validation_loop_config(cfg.val_cfg),
        )

    runner_class, runner_kwargs = _runner_class_and_kwargs(cfg, deepspeed, resume_from)
    runner = quiet_console_runner(runner_class)(
        work_dir=work_dir,
        train_dataloader=train_dataloader,
        train_cfg=cfg.train_cfg,
        param_scheduler=cfg.get("param_scheduler"),
        default_hooks=_default_hooks(cfg),
        log_processor=cfg.get("log_processor") or dict(type=RewardLogProcessor, by_epoch=False),
        visualizer=cfg.get("visualizer"),
        env_cfg=cfg.get("env_cfg", dict(dist_cfg=dict(backend="nccl"))),
        randomness=randomness,
        resume=resume_from is not None,
        load_from=resume_from,
        log_level=cfg.get("log_level", "INFO"),
        launcher=launcher,  # the process group already exists; mmengine only wraps the model
        cfg=cfg,
        **validation,
        **runner_kwargs,
    )
    _check_vocabulary(runner, train_dataset)
    # Shown on the console when the data was built; here for the log file.
    runner.logger.info(train_dataset.summary_text(), extra=FILE_ONLY)
    if validates:
        runner.logger.info(f"validation: {val_dataset.summary_text()}", extra=FILE_ONLY)
    runner.logger.info(built_line(runner, cfg, train_dataset, val_dataset if validates else None, deepspeed))
    if resume is not None and resume_from is None:
        runner.logger.info(f"--resume auto: no checkpoint in {work_dir} yet, starting from the beginning")
    runner.train()
    if runner.rank == 0:
        for line in finished_lines(config, work_dir):
            runner.logger.info(line)
    return runner
