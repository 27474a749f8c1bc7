"""`rmtrain serve` throughput and latency under 1, 8 and 32 concurrent clients, against an in-process ceiling.

For each model (tiny: the tiny demo Llama; smollm2: SmolLM2-135M-Instruct from rmtrain.assets), with a
random value head (throughput does not depend on the head's values), saved as a training checkpoint:

  server   `rmtrain serve CHECKPOINT --config CFG` in its own process on a loopback port. C client threads
           (C = 1, 8, 32) each send R requests one after another over a kept-alive HTTP connection,
           each request `POST /get_reward` with one text (as OpenRLHF's PPO sends a rollout), rendered
           with the model's chat template from the demo preference conversations.
           Measured: scored sequences per second over the whole run, p50 / p99 request latency.
  ceiling  the same texts, tokenised the same way, scored in this process by the server's own scorer
           (`rmtrain.serve.RewardScorer.score`) in length-sorted batches of --max-batch-size: no HTTP,
           no queue, no waiting for a batch to fill. The best the server could do.

The ratio server / ceiling shows what HTTP, JSON, the queue and dynamic batching cost. The server's
resident memory (VmRSS, and its peak VmHWM) is read from /proc after the runs.

The client threads run on the same machine as the server and take CPU from it; run the benchmark on
an otherwise idle machine, and read figures measured while other work shared the cores as such (the
report prints the torch threads, the cores it was pinned to and the load average).

    python3 tools/bench_serve.py                        # tiny and smollm2, 1/8/32 clients
    python3 tools/bench_serve.py --models tiny --requests 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rmtrain.builder import build  # noqa: E402
from rmtrain.config import load_config  # noqa: E402
from rmtrain.data import build_demo_preference_data  # noqa: E402
from rmtrain.recipes import resolve_config  # noqa: E402
from rmtrain.scoring import length_sorted_batches  # noqa: E402

RECIPES = {"tiny": "tiny_llama_reward_full_demo", "smollm2": "smollm2_135m_instruct_reward_full_demo"}


def save_checkpoint(recipe: str, folder: Path) -> tuple[Path, Path]:
    """The recipe's model with a random value head, saved as a training checkpoint; (config, checkpoint)."""
    config = Path(resolve_config(recipe))
    model = build(load_config(str(config)).model)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.v_head.weight, std=0.02)
    checkpoint = folder / f"{recipe}.pth"
    torch.save({"meta": {"iter": 0}, "state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: Path, config: Path, port: int, max_batch_size: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "rmtrain.cli", "serve", str(checkpoint), "--config", str(config), "--port", str(port),
        "--max-batch-size", str(max_batch_size), "--max-queue", "4096",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited; see {log}:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer /health within 600 s; see {log}")


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def load(port: int, texts: list[str], clients: int, requests_per_client: int) -> dict:
    """C threads, each R sequential requests of one text; throughput and latency percentiles."""
    latencies, errors = [], []
    lock = threading.Lock()

    def client(seed: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        mine = []
        for index in range(requests_per_client):
            body = json.dumps({"query": [texts[(seed * requests_per_client + index) % len(texts)]]})
            start = time.perf_counter()
            connection.request("POST", "/get_reward", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                with lock:
                    errors.append((response.status, payload[:200]))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "sequences_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * quantiles[98],
        "requests": len(latencies),
    }


def ceiling(checkpoint: Path, config: Path, texts: list[str], max_batch_size: int, repeats: int) -> float:
    """Sequences per second of the server's scorer called directly on length-sorted batches."""
    from rmtrain.serve import RewardScorer

    scorer = RewardScorer(str(checkpoint), str(config), max_length=None, normalize=False)
    sequences = scorer.encode_texts(texts)
    batches = [
        [sequences[i] for i in batch] for batch in length_sorted_batches([len(s) for s in sequences], max_batch_size)
    ]
    scorer.score(batches[0])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for batch in batches:
            scorer.score(batch)
    return repeats * len(sequences) / (time.perf_counter() - start)


def bench_model(name: str, args, work: Path) -> dict:
    config, checkpoint = save_checkpoint(RECIPES[name], work)
    cfg = load_config(str(config))
    tokenizer = build(cfg.train_dataloader.dataset.tokenizer)
    records = build_demo_preference_data(num_pairs=args.texts, seed=3)
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["chosen"], tokenize=False) for r in records]
    result = {"model": name, "ceiling": ceiling(checkpoint, config, texts, args.max_batch_size, args.ceiling_repeats)}
    port = free_loopback_port()
    process = start_server(checkpoint, config, port, args.max_batch_size, work / f"serve_{name}.log")
    try:
        load(port, texts, 4, 3)  # warm-up
        result["clients"] = {c: load(port, texts, c, args.requests) for c in args.clients}
        result["rss_mib"], result["peak_rss_mib"] = rss_mib(process.pid)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    result["mean_tokens"] = statistics.mean(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return result


def report(results: list[dict], args) -> str:
    lines = [
        f"rmtrain serve, POST /get_reward with 1 text per request, --max-batch-size {args.max_batch_size}, "
        f"{args.requests} requests per client; torch threads {torch.get_num_threads()}, "
        f"CPU cores {sorted(os.sched_getaffinity(0))} of {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} at the end",
        "",
        "| model | clients | sequences/s | p50 ms | p99 ms | vs ceiling | server RSS (peak) |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for clients, row in result["clients"].items():
            lines.append(
                f"| {result['model']} ({result['mean_tokens']:.0f} tokens/text) | {clients} | "
                f"{row['sequences_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                f"{row['sequences_per_s'] / result['ceiling']:.2f} | "
                f"{result['rss_mib']:.0f} MiB ({result['peak_rss_mib']:.0f}) |"
            )
        lines.append(f"| {result['model']} | in-process ceiling | {result['ceiling']:.1f} | | | 1.00 | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    parser.add_argument("--clients", default="1,8,32", help="comma-separated concurrent client counts")
    parser.add_argument("--requests", type=int, default=40, help="requests per client per run (default 40)")
    parser.add_argument("--texts", type=int, default=256, help="distinct texts (default 256)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--ceiling-repeats", type=int, default=3)
    parser.add_argument("--work-dir", help="where checkpoints and server logs go (default: a temporary folder)")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_serve_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models.split(","):
        results.append(bench_model(name, args, work))
        print(f"{name}: done", file=sys.stderr, flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(report(results, args))


if __name__ == "__main__":
    main()
