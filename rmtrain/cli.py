"""The `rmtrain` command: parse arguments and call one library function per verb.

Heavy libraries (torch, transformers, mmengine's Runner) are imported inside the verbs that need
them, so `list-cfg` and `copy-cfg` stay fast.
"""

import argparse
import os
import sys

from rmtrain.errors import RmtrainError


def _list_cfg(args) -> int:
    from rmtrain.recipes import list_configs

    names = list_configs(args.pattern)
    print("\n".join(names) if names else f"no shipped config matches '{args.pattern}'")
    return 0


def _copy_cfg(args) -> int:
    from rmtrain.recipes import copy_config

    dest = copy_config(args.config_name, args.save_dir)
    print(f"Copy to {dest}")
    return 0


def _train(args) -> int:
    from rmtrain.engine.launch import launch_with_torchrun, torchrun_requested
    from rmtrain.recipes import resolve_config

    resolve_config(args.config)  # a wrong name fails at once, before the training stack is imported
    if args.deepspeed:
        from rmtrain.engine.deepspeed import resolve_deepspeed_config

        resolve_deepspeed_config(args.deepspeed)  # in this process, not once per torchrun rank
    if args.launcher == "none" and torchrun_requested():
        return launch_with_torchrun(args.raw_argv)  # every process re-runs this command with --launcher pytorch
    from rmtrain.engine.distributed import leave_process_group
    from rmtrain.engine.train import train

    train(
        args.config,
        work_dir=args.work_dir,
        resume=args.resume,
        seed=args.seed,
        cfg_options=args.cfg_options,
        launcher=args.launcher,
        deepspeed=args.deepspeed,
        trust_checkpoint=args.trust_checkpoint,
    )
    leave_process_group()
    return 0


def _convert_pth_to_hf(args) -> int:
    from rmtrain.recipes import resolve_config

    resolve_config(args.config)
    from rmtrain.convert import convert_pth_to_hf

    convert_pth_to_hf(
        args.config,
        args.pth,
        args.save_dir,
        fp32=args.fp32,
        max_shard_size=args.max_shard_size,
        verify=not args.no_verify,
        overwrite=args.overwrite,
        trust_checkpoint=args.trust_checkpoint,
        adapter=args.adapter,
    )
    return 0


def _plot(args) -> int:
    from rmtrain.plot import plot_training_curves

    print(f"Plot saved to {plot_training_curves(args.work_dir, out=args.out, run=args.run)}")
    return 0


def _check_data(args) -> int:
    from rmtrain.recipes import resolve_config

    resolve_config(args.config)
    from rmtrain.check_data import check_data

    print(check_data(args.config, cfg_options=args.cfg_options))
    return 0


def _eval(args) -> int:
    if args.config:
        from rmtrain.recipes import resolve_config

        resolve_config(args.config)  # a wrong name fails at once
    from rmtrain.evaluation import evaluate_reward_model, summary_table

    summary = evaluate_reward_model(
        args.model,
        args.data,
        config=args.config,
        map_fn=args.map_fn,
        batch_size=args.batch_size,
        max_length=args.max_length,
        out=args.out,
        chat_template=args.chat_template,
        skip_bad_records=args.skip_bad_records,
        normalize=args.normalize,
        write_stats=args.write_stats,
        trust_remote_code=args.trust_remote_code,
        trust_checkpoint=args.trust_checkpoint,
    )
    print(summary_table(summary))
    return 0


def _serve(args) -> int:
    import os

    if args.config:
        from rmtrain.recipes import resolve_config

        resolve_config(args.config)  # a wrong name fails at once
    from rmtrain.serve import API_KEY_ENV, ServeLimits, serve

    limits = ServeLimits(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_request_items=args.max_request_items,
        max_request_bytes=args.max_request_bytes,
    )
    serve(
        args.model,
        config=args.config,
        host=args.host,
        port=args.port,
        max_length=args.max_length,
        api_key=args.api_key or os.environ.get(API_KEY_ENV),
        normalize=args.normalize,
        limits=limits,
        trust_remote_code=args.trust_remote_code,
        trust_checkpoint=args.trust_checkpoint,
    )
    return 0


def _parse_cfg_options(pairs: list[str]) -> dict:
    """`key=value` pairs -> dict, with values read as Python literals where they parse."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--opts", nargs="+", action=DictAction)
    return vars(parser.parse_args(["--opts", *pairs]))["opts"]


def _add_trust_checkpoint(parser, what: str) -> None:
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help=f"load {what}'s checkpoint with a full unpickle (runs any code in it); only for files you trust",
    )


def _add_trust_remote_code(parser) -> None:
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the model folder's own Python run (its rmtrain_config.py, tokenizer or model code); off by default",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmtrain", description="Train reward models for RLHF from mmengine Python configs."
    )
    parser.add_argument("--version", action=_VersionAction, help="print rmtrain's and its libraries' versions")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("list-cfg", help="list the shipped configs")
    p.add_argument("-p", "--pattern", help="case-insensitive substring to filter names")
    p.set_defaults(func=_list_cfg)

    p = verbs.add_parser("copy-cfg", help="copy a shipped config to DIR/<name>_copy.py")
    p.add_argument("config_name", help="bare name of a shipped config")
    p.add_argument("save_dir", help="folder to copy it into")
    p.set_defaults(func=_copy_cfg)

    p = verbs.add_parser("train", help="train a reward model from a config")
    p.add_argument("config", help="config file path, or the bare name of a shipped config")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default ./work_dirs/<config>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="auto|PATH",
        help="resume from the latest checkpoint in the work dir (auto) or from PATH",
    )
    p.add_argument("--seed", type=int, help="random seed (default: the config's; on resume, the checkpoint's)")
    p.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. optim_wrapper.optimizer.lr=1e-5; unknown keys are an error",
    )
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    p.add_argument("--deepspeed", help="a built-in DeepSpeed config name or a JSON path")
    _add_trust_checkpoint(p, "--resume")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=_train)

    p = verbs.add_parser("convert", help="convert checkpoints")
    conversions = p.add_subparsers(dest="conversion", required=True, metavar="CONVERSION")
    p = conversions.add_parser("pth_to_hf", help="a training checkpoint -> a Hugging Face folder, verified")
    p.add_argument("config", help="the training config (path or shipped name)")
    p.add_argument("pth", help="the checkpoint, e.g. work_dirs/<config>/iter_500.pth")
    p.add_argument("save_dir", help="the folder to write")
    p.add_argument("--fp32", action="store_true", help="save fp32 weights (default: bf16)")
    p.add_argument("--max-shard-size", default="2GB", help="largest weight file (default 2GB)")
    p.add_argument(
        "--safe-serialization", action="store_true", help="accepted for compatibility; weights are always safetensors"
    )
    p.add_argument("--no-verify", action="store_true", help="skip reloading the folder and comparing its scores")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty SAVE_DIR")
    _add_trust_checkpoint(p, "PTH")
    p.add_argument(
        "--adapter",
        action="store_true",
        help="LoRA checkpoints: write a PEFT adapter folder (adapters + value head) instead of merging them",
    )
    p.set_defaults(func=_convert_pth_to_hf)

    p = verbs.add_parser("plot", help="draw a work dir's training curves into a PNG")
    p.add_argument("work_dir", help="the training work dir (or one of its <timestamp> folders)")
    p.add_argument("--out", help="the PNG to write (default WORK_DIR/training_curves.png)")
    p.add_argument("--run", metavar="TIMESTAMP", help="plot this run (and those it resumed) instead of the newest")
    p.set_defaults(func=_plot)

    p = verbs.add_parser("check-data", help="build a config's data as training does and describe it (no model)")
    p.add_argument("config", help="config file path, or the bare name of a shipped config")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.set_defaults(func=_check_data)

    p = verbs.add_parser("eval", help="a reward model's accuracy on preference pairs, overall and per subset")
    p.add_argument(
        "model", help="a folder from `rmtrain convert pth_to_hf`, or a checkpoint (iter_N.pth) with --config"
    )
    p.add_argument("data", help="preference records: a .jsonl, .json, .parquet or .csv file (.gz ok)")
    p.add_argument("--config", help="the training config (needed for a checkpoint; gives max_length)")
    p.add_argument("--map-fn", help="map function name or dotted path (default: found from the first records' shape)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (default 8)")
    p.add_argument("--max-length", type=int, help="tokens per sequence (default: the training config's, else 2048)")
    p.add_argument("--out", help="write one JSON line per pair here, and the summary to OUT's .summary.json")
    p.add_argument("--chat-template", help="a named template or Jinja text instead of the model's")
    p.add_argument(
        "--skip-bad-records", action="store_true", help="drop and count records the map function cannot read"
    )
    p.add_argument(
        "--write-stats",
        action="store_true",
        help="write the score mean and std on DATA into the folder's config.json (as OpenRLHF reads them) and README",
    )
    p.add_argument(
        "--normalize", action="store_true", help="report (score - mean) / std with the folder's config.json statistics"
    )
    _add_trust_remote_code(p)
    _add_trust_checkpoint(p, "MODEL")
    p.set_defaults(func=_eval)

    p = verbs.add_parser("serve", help="an HTTP reward server (OpenRLHF's /get_reward, /score for chats, /health)")
    p.add_argument("model", help="a folder from `rmtrain convert pth_to_hf`, or a checkpoint with --config")
    p.add_argument("--config", help="the training config (needed for a checkpoint; gives max_length)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch-size", type=int, default=32, help="sequences per forward pass (default 32)")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to share its batch (5)"
    )
    p.add_argument("--max-queue", type=int, default=1024, help="sequences queued at most; beyond, 503 (default 1024)")
    p.add_argument("--max-length", type=int, help="tokens per sequence (default: the training config's, else 2048)")
    p.add_argument("--max-request-items", type=int, default=256, help="texts or conversations per request (256)")
    p.add_argument(
        "--max-request-bytes", type=int, default=16 * 1024 * 1024, help="request body size limit (default 16 MiB)"
    )
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $RMTRAIN_API_KEY, else none)")
    p.add_argument(
        "--normalize", action="store_true", help="return (score - mean) / std with the folder's config.json statistics"
    )
    _add_trust_remote_code(p)
    _add_trust_checkpoint(p, "MODEL")
    p.set_defaults(func=_serve)
    return parser


def versions_text() -> str:
    """`rmtrain --version`: rmtrain and the libraries it runs on (read from package metadata, nothing imported)."""
    from importlib import metadata

    lines = []
    for name in ("rmtrain", "torch", "transformers", "mmengine", "deepspeed"):
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{name} not installed")
    return "\n".join(lines)


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(versions_text())
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    from rmtrain.compat import quiet_deepspeed_accelerator_notice

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.raw_argv = argv
    quiet_deepspeed_accelerator_notice()
    try:
        if getattr(args, "cfg_options", None):
            args.cfg_options = _parse_cfg_options(args.cfg_options)
        return args.func(args)
    except RmtrainError as error:
        print(f"rmtrain: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`rmtrain list-cfg | head -3`): stop quietly, as other command-line tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
