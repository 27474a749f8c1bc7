"""Print the GPU memory table of docs/en/gpu.md: every shipped recipe's model states per GPU, per launch.

    python3 tools/gpu_memory_table.py [--gpu-gb 80] [--gpus 8]

Each recipe's reward model is built on the `meta` device from its config (no download, no weights);
the bytes per parameter per launch are those of `rmtrain.engine.memory`. Activations are not included.
"""

import argparse

from rmtrain.engine.memory import FIT_FRACTION, GIB, launch_flag, recipe_memory_rows


def _launch(launch: str | None) -> str:
    return "none fits" if launch is None else f"`{launch_flag(launch)}`"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU in GB (10^9 bytes)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the multi-GPU columns")
    args = parser.parse_args()
    device_bytes, n = args.gpu_gb * 1e9, args.gpus
    print(
        f"Model states (fp32 weights + gradients + AdamW state under DDP; bf16 under DeepSpeed ZeRO) in GiB per GPU; "
        f"a launch fits when they take at most {FIT_FRACTION:.0%} of a {args.gpu_gb:g} GB GPU.\n"
    )
    print(
        f"| recipe | parameters | 1 GPU | DDP x{n} | ZeRO-2 x{n} | ZeRO-3 x{n} | launch on 1 x {args.gpu_gb:g} GB "
        f"| launch on {n} x {args.gpu_gb:g} GB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in recipe_memory_rows(device_bytes, n):
        if row["params"] is None:
            print(f"| `{row['recipe']}` | unknown | | | | | | |")
            continue
        print(
            f"| `{row['recipe']}` | {row['params'] / 1e6:,.1f}M | {row['one_gpu'] / GIB:.1f} | {row[f'ddp_x{n}'] / GIB:.1f} "
            f"| {row[f'zero2_x{n}'] / GIB:.1f} | {row[f'zero3_x{n}'] / GIB:.1f} | {_launch(row['launch_x1'])} "
            f"| {_launch(row[f'launch_x{n}'])} |"
        )


if __name__ == "__main__":
    main()
