"""Attention for packed rows on the CPU: candidate kernels, timed forward + backward, and checked for exactness.

    python tools/bench_packed_attention.py --dataset hh --heads 4 --kv-heads 2 --dim 64 --threads 1

Each batch is the sequences of P pairs (chosen and rejected sides) drawn in a seeded order from the
benchmark's tokenised data (tools/bench_throughput's cache: ../shared/data, max_length 1024), laid in one
row as `rmtrain.scoring.pack_sequences` lays them. Per candidate: the median time of one attention call's
forward and backward over the batches (bf16 inputs, as under autocast), and its largest difference from
per-sequence causal SDPA in fp32. Candidates:

  loop          causal SDPA on each sequence separately (the former SDPA path)
  bucketed      `rmtrain.model.packed_attention.bucketed_sdpa` with `rmtrain.scoring.attention_buckets`
                (--call-costs: the bucketing's cost of one extra call; 0 splits most, a huge one pads all
                sequences into one bucket)
  indexing      bucketed_sdpa written with x[:, index] (advanced indexing) instead of index_select
  nested        torch jagged nested tensors with SDPA (skipped with the reason where this build lacks it)
  flex          FlexAttention with a document mask, torch.compile'd (compile time printed separately)
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rmtrain.model.packed_attention import bucketed_sdpa  # noqa: E402
from rmtrain.scoring import BUCKET_CALL_COST, bucket_indices, pack_sequences  # noqa: E402


def loop_attention(q, k, v, bounds):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    outs = [
        F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True)
        for s, e in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outs, dim=2).transpose(1, 2)


def bucketed_advanced_indexing(q, k, v, buckets):
    """bucketed_sdpa with x[:, index] instead of index_select (backward: accumulating index_put_)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    q, k, v = q[0], k[0], v[0]
    heads, dim = q.shape[0], q.shape[-1]
    outputs = []
    for gather, real, width in zip(buckets["gather"], buckets["real_slots"], buckets["widths"]):
        qb, kb, vb = (x[:, gather].view(heads, -1, width, dim).transpose(0, 1) for x in (q, k, v))
        out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True)
        outputs.append(out.transpose(0, 1).reshape(heads, -1, dim)[:, real])
    return torch.cat(outputs, dim=1)[:, buckets["restore"]].transpose(0, 1)[None]


def nested_attention(q, k, v, bounds):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    offsets = torch.tensor(bounds, dtype=torch.long)

    def jagged(x):  # [1, heads, total, dim] -> nested [sequences, heads, j, dim]
        return torch.nested.nested_tensor_from_jagged(x[0].transpose(0, 1).contiguous(), offsets).transpose(1, 2)

    out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), is_causal=True)
    return out.transpose(1, 2).values()[None]


def make_flex():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=True)

    def flex(q, k, v, bounds):
        total = q.shape[2]
        document = torch.repeat_interleave(
            torch.arange(len(bounds) - 1), torch.tensor(bounds[1:]) - torch.tensor(bounds[:-1])
        )

        def mask(b, h, q_idx, kv_idx):
            return (document[q_idx] == document[kv_idx]) & (q_idx >= kv_idx)

        block = create_block_mask(mask, None, None, total, total, device="cpu")
        groups = q.shape[1] // k.shape[1]
        return compiled(q, k, v, block_mask=block, enable_gqa=groups > 1).transpose(1, 2)

    return flex


def time_call(fn, q, k, v, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        start = time.perf_counter()
        out = fn(qq, kk, vv)
        out.float().sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="hh", choices=("hh", "ultrafeedback"))
    parser.add_argument("--pairs", type=int, default=8, help="pairs per row (default 8)")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--call-costs", default=f"0,{BUCKET_CALL_COST},{16 * BUCKET_CALL_COST},1000000000000")
    parser.add_argument("--candidates", default="loop,bucketed,indexing,nested,flex")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tools.bench_throughput.inputs import build_pairs, build_tokenizer
    from tools.bench_throughput.settings import DATASETS, DEFAULT_DATA_ROOT, REPO_ROOT

    cache = REPO_ROOT / "work_dirs" / "bench_throughput" / "cache"
    data_root = Path(DEFAULT_DATA_ROOT)
    tokenizer_dir = build_tokenizer(data_root, 32000, cache)
    spec = DATASETS[args.dataset]
    _, ref = build_pairs(data_root / spec["file"], spec["map_fn"], tokenizer_dir, 1024, cache)
    lengths = ref["lengths"]
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    batches = []
    for b in range(args.batches):
        chosen = order[b * args.pairs : (b + 1) * args.pairs]
        batches.append([lengths[i][0] for i in chosen] + [lengths[i][1] for i in chosen])

    candidates = {}
    names = args.candidates.split(",")
    if "loop" in names:
        candidates["loop"] = lambda q, k, v, seqs, b: loop_attention(q, k, v, b)
    if "bucketed" in names:
        for cost in (int(c) for c in args.call_costs.split(",")):
            candidates[f"bucketed (call cost {cost})"] = lambda q, k, v, seqs, b, cost=cost: bucketed_sdpa(
                q, k, v, bucket_indices(seqs, cost), 0.0, None
            )
    if "indexing" in names:
        candidates[f"bucketed, x[:, index] (call cost {BUCKET_CALL_COST})"] = lambda q, k, v, seqs, b: (
            bucketed_advanced_indexing(q, k, v, bucket_indices(seqs))
        )
    if "nested" in names:
        candidates["nested"] = lambda q, k, v, seqs, b: nested_attention(q, k, v, b)
    if "flex" in names:
        flex = make_flex()
        candidates["flex (compiled)"] = lambda q, k, v, seqs, b: flex(q, k, v, b)

    generator = torch.Generator().manual_seed(1)
    print(f"{args.dataset}: {args.batches} rows of {args.pairs} pairs, heads {args.heads}/{args.kv_heads}, "
          f"dim {args.dim}, {args.threads} thread(s); mean row {statistics.mean(map(sum, batches)):.0f} tokens")  # fmt: skip
    print(f"{'candidate':34s} {'fwd+bwd ms':>10s} {'vs loop':>8s} {'max |diff| fp32':>16s} {'buckets':>8s}  note")
    loop_ms = None
    for name, fn in candidates.items():
        try:
            first_start = time.perf_counter()
            diffs, medians = [], []
            for seqs in batches:
                bounds = pack_sequences([[0] * n for n in seqs])["cu_seq_lens"].tolist()
                total = bounds[-1]
                q = torch.randn(1, args.heads, total, args.dim, generator=generator)
                k = torch.randn(1, args.kv_heads, total, args.dim, generator=generator)
                v = torch.randn(1, args.kv_heads, total, args.dim, generator=generator)
                with torch.no_grad():
                    reference = loop_attention(q, k, v, bounds)
                    diffs.append((fn(q, k, v, seqs, bounds) - reference).abs().max().item())
                if not medians:
                    first_s = time.perf_counter() - first_start  # includes compiling, for flex
                bf = [x.bfloat16() for x in (q, k, v)]

                def call(a, b_, c, fn=fn, seqs=seqs, bounds=bounds):
                    return fn(a, b_, c, seqs, bounds)

                medians.append(time_call(call, *bf, args.repeats))
            ms = 1000 * statistics.mean(medians)
            loop_ms = ms if name == "loop" else loop_ms
            ratio = f"{loop_ms / ms:.2f}x" if loop_ms else ""
            cost = int(name.split("call cost ")[1].rstrip(")")) if "call cost" in name else None
            count = statistics.mean(len(bucket_indices(s, cost)["widths"]) for s in batches) if cost is not None else ""
            note = f"first call {first_s:.1f}s (compile)" if "flex" in name else ""
            count_text = f"{count:.1f}" if count != "" else ""
            print(f"{name:34s} {ms:10.2f} {ratio:>8s} {max(diffs):16.2e} {count_text:>8s}  {note}", flush=True)
        except Exception as error:  # noqa: BLE001  a candidate this build cannot run is reported, not fatal
            print(f"{name:34s} {'n/a':>10s}   unsupported here: {type(error).__name__}: {str(error)[:150]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
