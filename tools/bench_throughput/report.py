"""Tables, checks and docs/benchmarks.md from the arms' results."""

from pathlib import Path

from .settings import ALL_ARMS, ARM_TITLES


def _fmt_ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b or not a.get("ok") or not b.get("ok"):
        return "n/a"
    return f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x"


def format_table(results: dict, markdown: bool) -> list[str]:
    header = [
        "arm",
        "real tokens/s",
        "padded fraction",
        "peak MiB",
        "mean pairs/step",
        "tokens/seq",
        "s/step",
        "median s/step",
    ]
    rows = []
    for arm in ALL_ARMS:
        r = results.get(arm)
        if r is None:
            continue
        if r.get("ok"):
            rows.append([
                ARM_TITLES[arm], f"{r['tokens_per_s']:,.0f}", f"{r['padded_fraction']:.1%}", f"{r['peak_rss_mib']:,.0f}",
                f"{r['mean_pairs_per_step']:.2f}", f"{r['tokens_per_seq']:.0f}", f"{r['step_s']:.2f}",
                f"{r['step_s_median']:.2f}",
            ])  # fmt: skip
        else:
            error = r.get("error", "failed").replace("|", "/").replace("\n", " ")
            peak = f"{r['peak_rss_mib']:,.0f}" if "peak_rss_mib" in r else ""
            rows.append([ARM_TITLES[arm], f"failed: {error[:160]}", "", peak, "", "", "", ""])
    lines = []
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [
            max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i]) for i in range(len(header))
        ]

        def fmt(row: list[str]) -> str:
            return "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))

        lines.append(fmt(header))
        lines += [fmt(row) for row in rows]
    ratios = [
        f"rmtrain packed / TRL: {_fmt_ratio(results.get('rmtrain_packed'), results.get('trl'))}",
        f"rmtrain packed / ceiling: {_fmt_ratio(results.get('rmtrain_packed'), results.get('ceiling'))}",
        f"rmtrain padded / TRL: {_fmt_ratio(results.get('rmtrain_padded'), results.get('trl'))}",
    ]
    if "trl_grouped" in results:
        ratios.append(f"rmtrain padded / TRL + group_by_length: "
                      f"{_fmt_ratio(results.get('rmtrain_padded'), results.get('trl_grouped'))}")  # fmt: skip
    lines.append("")
    lines.append(("Ratios of real tokens/s: " if markdown else "ratios (real tokens/s): ") + "; ".join(ratios))
    paired = [
        f"{ARM_TITLES[other]} {ratio:.2f}x"
        for other in ("rmtrain_padded", "trl")
        if (ratio := paired_speedup(results.get("rmtrain_packed"), results.get(other))) is not None
    ]
    if paired:
        lines.append("")
        lines.append(
            "Step by step (every arm trains the same pairs in each step): rmtrain packed is faster than "
            + ", ".join(paired)
            + " (median over the window of the other arm's step time / packed's; less sensitive to other load)."
        )
    return lines


def paired_speedup(packed: dict | None, other: dict | None) -> float | None:
    """Median over the window's steps of other's step time / packed's step time (the same pairs per step)."""
    if not packed or not other or "step_times" not in packed or "step_times" not in other:
        return None
    ratios = sorted(o / p for p, o in zip(packed["step_times"], other["step_times"]))
    return ratios[len(ratios) // 2] if ratios else None


def write_docs(path: Path, all_results: list[dict], info: dict, settings: dict, command: str) -> None:
    lines = [
        "# Training throughput: rmtrain against TRL and the bare model",
        "",
        "Written by `python -m tools.bench_throughput --write-docs` (or `--from-results` for a run made in parts);",
        "re-run the commands below to reproduce.",
        "",
        "Four arms train the same random-init Llama reward model on the same tokenised pairs, and the",
        "three that train pairs train **the same pairs in the same order** over the measured window: the",
        "benchmark draws one list of steps of P pairs and every arm trains those steps. `--order grouped`",
        "(the default): rmtrain's length-grouped batching (`LengthGroupedSampler`, seed 0), pairs of similar",
        "length share a step; `--order random`: consecutive pairs of a seeded shuffle (TRL's default batching).",
        "Each section names its order.",
        "",
        "- **rmtrain packed**: `rmtrain train` with `use_varlen_attn=True`; each step's pairs laid whole in one",
        "  padding-free row (one row per optimizer step).",
        "- **rmtrain padded**: the same config with `use_varlen_attn=False`; each step's pairs right-padded to",
        "  the longest sequence of the step.",
        "- **TRL RewardTrainer** (trl {trl}): `LlamaForSequenceClassification(num_labels=1)`, given the same token".format(
            **info
        ),
        "  ids (pre-tokenised `chosen_ids` / `rejected_ids`) in the window's order (`train_sampling_strategy=",
        '  "sequential"`), TRL\'s collator (pads to the longest sequence of the step).',
        "- **ceiling**: the bare model's forward + backward + AdamW step on fixed-shape `[2P, L]` rows of real",
        "  tokens cut from the measured window (L = its mean sequence length), same value head and loss, no data",
        "  pipeline and no padding.",
        "",
        "Shared: tokenizer (byte-level BPE, vocab {vocab}, trained on the two data sets, ChatML template, a pad",
        "and a reward token), weights, `max_length` {max_length}, AdamW (lr {lr}, constant, clip 1.0), {precision},",
        "{threads} torch thread(s), no gradient checkpointing, no evaluation, no checkpoint saving, no external",
        "logging, no reward centering, TRL's fused AdamW replaced by `torch.optim.AdamW`. Each arm runs in its own",
        "process.",
        "",
        "Pairs longer than `max_length`: rmtrain truncates them (the prompt from the left first, then the",
        "responses) and keeps every pair; TRL drops a pair with a side longer than `max_length` (it does not",
        "truncate). TRL is given rmtrain's truncated ids, so it drops none here; the count of pairs TRL would",
        "drop from the untruncated tokenisation is given per data set.",
        "",
        "Real tokens/s counts non-pad tokens over optimizer steps {first}..{last} (the first {warmup} steps,",
        "model build and data tokenising are excluded). Padded fraction = pad slots / all token slots. Peak MiB is the",
        "maximum RSS of the arm's process (imports, data and model included). tokens/seq is the mean real length of",
        "the sequences trained in the window (equal in the pair arms: the token check says so).",
        "A median s/step far from the mean s/step means the window was disturbed (other load) or uneven.",
        "",
    ]
    lines = [
        line.format(
            vocab=settings["vocab_size"], max_length=settings["max_length"], lr=settings["lr"],
            precision=info["precision"], threads=info["threads"], first=settings["warmup"] + 1,
            last=settings["warmup"] + settings["steps"], warmup=settings["warmup"],
        ) if "{" in line else line
        for line in lines
    ]  # fmt: skip
    for entry in all_results:
        order = entry.get("order", settings["order"])
        lines.append(
            f"## {entry['size']} model ({entry['params'] / 1e6:.1f}M parameters), {entry['dataset']}, {order} batches"
        )
        lines.append("")
        lines.append(
            f"{entry['pairs']} pairs, {entry['tokens']:,} tokens (mean pair {entry['tokens'] / entry['pairs']:.0f}); "
            f"P = {settings['pairs_per_step']} pairs per step; measured window: {entry['window_pairs']} pairs, "
            f"{entry['window_tokens']:,} tokens. Longer than max_length {settings['max_length']}: "
            f"{entry['over_length_pairs']} of {entry['untruncated_pairs']} pairs (untruncated), which TRL would drop "
            f"and rmtrain truncates (prompt cut in {entry['truncated']['prompt_cut_pairs']}, chosen response in "
            f"{entry['truncated']['chosen_cut_pairs']}, rejected response in {entry['truncated']['rejected_cut_pairs']})."
        )
        lines.append("")
        lines += format_table(entry["results"], markdown=True)
        for key in ("token_check", "settings_check"):
            if entry.get(key):
                lines += ["", entry[key]]
        lines.append("")
    lines += [
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; {info['threads']} torch threads per arm",
        (
            f"- Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
            f"trl {info['trl']}, mmengine {info['mmengine']}"
        ),
        f"- Precision: {info['precision']}",
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_generated_block(path.read_text() if path.exists() else "", "\n".join(lines)))


GENERATED_START = "<!-- bench_throughput:generated start -->"
GENERATED_END = "<!-- bench_throughput:generated end -->"


def replace_generated_block(text: str, generated: str) -> str:
    """The page with its generated block replaced; what is written around the markers by hand stays."""
    block = f"{GENERATED_START}\n{generated}\n{GENERATED_END}"
    if GENERATED_START in text and GENERATED_END in text:
        before, rest = text.split(GENERATED_START, 1)
        return before + block + rest.split(GENERATED_END, 1)[1]
    return block + "\n"


def settings_check(results: dict) -> str:
    """What each arm actually ran with, read back from the trainer objects after training."""
    parts = []
    for arm in ALL_ARMS:
        checks = (results.get(arm) or {}).get("checks")
        if checks:
            parts.append(
                f"{ARM_TITLES[arm]}: autocast {checks['autocast']}, activation checkpointing "
                f"{'ON' if checks['grad_checkpointing'] else 'off'}, {checks['optimizer']}, {checks['threads']} threads, "
                f"attention {checks['attention']}"
                + (f", rows of {checks['row_len']} tokens" if "row_len" in checks else "")
            )
    loads = ", ".join(f"{ARM_TITLES[arm]} {r['load_before']:.1f}" for arm, r in results.items() if "load_before" in r)
    return ("Settings read back: " + "; ".join(parts) + "." if parts else "") + (
        f" Load average (1 min) when each arm started: {loads}." if loads else ""
    )


def token_check(results: dict, reference: dict) -> str:
    """Every arm must train the same data, and the pair arms the same sequences in the same order over the
    measured window: same data set fingerprint, same window fingerprint."""
    expected = (reference["tokens"], reference["pairs"], reference["digest"])
    seen = {
        arm: (r.get("dataset_tokens"), r.get("dataset_pairs"), r.get("token_digest"))
        for arm, r in results.items() if r.get("ok")
    }  # fmt: skip
    mismatched = {arm: v for arm, v in seen.items() if v != expected}
    windows = {arm: r["window_digest"] for arm, r in results.items() if r.get("ok") and "window_digest" in r}
    other_window = {arm: d for arm, d in windows.items() if d != reference["window_digest"]}
    if mismatched or other_window:
        return (
            f"Token check FAILED: reference {reference['tokens']} tokens in {reference['pairs']} pairs "
            f"(fingerprint {reference['digest']}, window {reference['window_digest']}); "
            + ", ".join(f"{ARM_TITLES[arm]}: {t} tokens in {p} pairs ({d})" for arm, (t, p, d) in mismatched.items())
            + "; ".join(f"{ARM_TITLES[arm]} trained window {d}" for arm, d in other_window.items())
        )
    return (
        f"Token check: every arm that ran ({', '.join(ARM_TITLES[arm] for arm in seen)}) read the same "
        f"{reference['tokens']:,} tokens in {reference['pairs']} pairs (fingerprint {reference['digest']}); "
        f"{', '.join(ARM_TITLES[arm] for arm in windows)} trained the same {reference['window_pairs']} pairs "
        f"({reference['window_tokens']:,} tokens) in the same order over the measured window (window fingerprint "
        f"{reference['window_digest']}, from the sequences each arm actually trained); the ceiling's rows are cut "
        f"from the same window's tokens."
    )
