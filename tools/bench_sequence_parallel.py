"""Peak memory per process and tokens/s of RewardModel training steps with SP=1 and SP=2, on one long row.

    python tools/bench_sequence_parallel.py                    # CPU: gloo, tiny Llama, pairs of 2 x 4096 tokens
    python tools/bench_sequence_parallel.py --tokens 8192 --pairs 1 --steps 3

The same global batch (`--pairs` pairs, each side `--tokens` tokens, packed into one padding-free row)
is trained by 1 process (SP=1) and by 2 processes splitting the row (SP=2, rmtrain's Ulysses
attention), started with torch.multiprocessing. Each process reports the peak of its resident memory
above what it held before the first step (on a GPU: peak allocated CUDA memory above the model's),
and the time per step; tokens/s counts the row's tokens once. On CPU the processes share the cores
they are given (`taskset`): with one core, SP=2 is not faster, its figure is memory.
"""

import argparse
import os
import resource
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MODEL = dict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=16384,
)
REWARD = 3


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_resident_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _worker(rank: int, world: int, port: int, args, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, args.threads // world))
    from transformers import LlamaConfig, LlamaModel

    from rmtrain.data.collate import preference_collate_fn
    from rmtrain.model.reward_model import RewardModel
    from rmtrain.parallel import init_sequence_parallel

    if world > 1:
        dist.init_process_group("nccl" if on_gpu else "gloo", rank=rank, world_size=world)
        init_sequence_parallel(world)
    torch.manual_seed(0)
    model = RewardModel(
        llm=LlamaModel(LlamaConfig(**MODEL)),
        reward_token_id=REWARD,
        use_varlen_attn=True,
        use_activation_checkpointing=args.activation_checkpointing,
    )
    device = torch.device("cuda", rank) if on_gpu else torch.device("cpu")
    model.to(device).train()
    generator = torch.Generator().manual_seed(1)

    def side():
        return torch.randint(4, MODEL["vocab_size"], (args.tokens - 1,), generator=generator).tolist() + [REWARD]

    pairs = [{"chosen_ids": side(), "rejected_ids": side()} for _ in range(args.pairs)]
    data = preference_collate_fn([pairs])["data"]
    data = {key: value.to(device) if torch.is_tensor(value) else value for key, value in data.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    start_memory = torch.cuda.memory_allocated(device) if on_gpu else _resident_mib()
    times = []
    for _ in range(args.steps):
        began = time.perf_counter()
        loss = model(data, mode="loss")["loss"]
        loss.backward()
        if world > 1:  # what DDP does: the average over all ranks
            for param in model.parameters():
                dist.all_reduce(param.grad)
                param.grad /= world
        optimizer.step()
        optimizer.zero_grad()
        if on_gpu:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - began)
    if on_gpu:
        peak = (torch.cuda.max_memory_allocated(device) - start_memory) / 2**20
    else:
        peak = _peak_resident_mib() - start_memory
    seconds = sum(times[1:]) / max(1, len(times) - 1)  # the first step warms up
    results[rank] = (peak, seconds, int(data["num_tokens"]))
    if world > 1:
        dist.destroy_process_group()


def run(world: int, args) -> list[tuple[float, float, int]]:
    from rmtrain.engine.launch import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world, free_port(), args, results), nprocs=world)
        return [results[rank] for rank in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per side of a pair")
    parser.add_argument("--pairs", type=int, default=1, help="pairs in the row (the global batch)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (the first is not timed)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads in all")
    parser.add_argument("--activation-checkpointing", action="store_true")
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {args.threads} thread(s)"
    row = 2 * args.pairs * args.tokens
    print(
        f"RewardModel, Llama hidden {MODEL['hidden_size']}, {MODEL['num_hidden_layers']} layers, "
        f"{MODEL['num_attention_heads']}/{MODEL['num_key_value_heads']} heads; one packed row of {row} tokens "
        f"({args.pairs} pair(s) of 2 x {args.tokens}); activation checkpointing "
        f"{'on' if args.activation_checkpointing else 'off'}; fp32; {device}"
    )
    memory = "peak CUDA memory above the model's" if torch.cuda.is_available() else "peak resident memory above start"
    print(f"| SP | processes | {memory}, per process (MiB) | s/step | tokens/s |")
    print("|---|---|---|---|---|")
    for world in (1, 2):
        results = run(world, args)
        peaks = ", ".join(f"{peak:.0f}" for peak, _, _ in results)
        seconds = max(s for _, s, _ in results)
        print(f"| {world} | {world} | {peaks} | {seconds:.2f} | {row / seconds:.0f} |")


if __name__ == "__main__":
    main()
