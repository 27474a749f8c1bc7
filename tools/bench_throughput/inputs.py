"""The inputs every arm shares, built once and cached: tokenizer, tokenised pairs, random-init weights."""

import gzip
import hashlib
import json
import time
from pathlib import Path

from .measure import token_digest
from .settings import DATASETS, MODEL_SIZES, REWARD_TOKEN, SEED, TOKENIZER_DATASETS


def _file_digest(paths: list[Path], *extra) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    for item in extra:
        digest.update(repr(item).encode())
    return digest.hexdigest()[:12]


def _read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_tokenizer(data_root: Path, vocab_size: int, cache_dir: Path) -> Path:
    """Byte-level BPE trained on the benchmark texts; rmtrain's demo special tokens and ChatML template."""
    from rmtrain.data.bpe import CHAT_SPECIAL_TOKENS as DEMO_SPECIAL_TOKENS
    from rmtrain.data.bpe import CHATML_TEMPLATE as DEMO_CHAT_TEMPLATE

    files = [data_root / DATASETS[name]["file"] for name in TOKENIZER_DATASETS]
    out_dir = cache_dir / f"tokenizer-{vocab_size}-{_file_digest(files, DEMO_SPECIAL_TOKENS, DEMO_CHAT_TEMPLATE)}"
    if (out_dir / "tokenizer.json").is_file():
        return out_dir
    from rmtrain.data.bpe import chat_tokenizer, train_byte_level_bpe
    from rmtrain.data.map_fns import resolve_map_fn
    from rmtrain.errors import RecordFieldError

    texts = []
    for name, path in zip(TOKENIZER_DATASETS, files):
        map_fn = resolve_map_fn(DATASETS[name]["map_fn"])
        for record in _read_jsonl_gz(path):
            try:
                mapped = map_fn(record)
            except RecordFieldError:  # dropped by the data set builder too
                continue
            for key in ("prompt", "chosen", "rejected"):
                texts += [f"{m['role']}\n{m['content']}\n" for m in mapped[key]]
    start = time.time()
    fast = chat_tokenizer(train_byte_level_bpe(texts, vocab_size), model_max_length=1 << 20)
    assert fast.convert_tokens_to_ids(REWARD_TOKEN) not in (fast.pad_token_id, fast.unk_token_id)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    fast.save_pretrained(str(tmp))
    tmp.rename(out_dir)
    print(f"tokenizer: BPE vocab {len(fast)} trained in {time.time() - start:.1f}s -> {out_dir}", flush=True)
    return out_dir


# From rmtrain's data set summary: pairs whose prompt / chosen / rejected side was cut to max_length.
TRUNCATION_KEYS = ("prompt_cut_pairs", "chosen_cut_pairs", "rejected_cut_pairs", "max_length")


def build_pairs(
    data_file: Path, map_fn: str, tokenizer_dir: Path, max_length: int, cache_dir: Path
) -> tuple[Path, dict]:
    """Tokenise a data set once with rmtrain's own code; TRL and the ceiling read these ids."""
    out_dir = (
        cache_dir
        / f"pairs-{data_file.name.split('.')[0]}-{max_length}-{_file_digest([data_file], tokenizer_dir.name, map_fn, TRUNCATION_KEYS)}"
    )
    if not (out_dir / "dataset_info.json").is_file():
        from transformers import AutoTokenizer

        from rmtrain.data import build_preference_dataset, load_jsonl_dataset

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        dataset = build_preference_dataset(
            dataset=dict(type=load_jsonl_dataset, data_files=str(data_file)),
            tokenizer=tokenizer,
            max_length=max_length,
            dataset_map_fn=map_fn,
            is_dpo=False,
            is_reward=True,
            reward_token_id=tokenizer.convert_tokens_to_ids(REWARD_TOKEN),
            num_proc=1,
            skip_bad_records=True,
        )
        dataset.pairs.select_columns(["chosen_ids", "rejected_ids"]).save_to_disk(str(out_dir))
        summary = dataset.summary
        (out_dir / "rmtrain_summary.json").write_text(json.dumps({k: summary.get(k) for k in TRUNCATION_KEYS}))
    import datasets

    pairs = datasets.load_from_disk(str(out_dir))
    lengths = [(len(c), len(r)) for c, r in zip(pairs["chosen_ids"], pairs["rejected_ids"])]
    digest = token_digest(pairs["chosen_ids"], pairs["rejected_ids"])
    truncated = json.loads((out_dir / "rmtrain_summary.json").read_text())
    return out_dir, {
        "truncated": truncated,  # how many pairs rmtrain cut to max_length (by side)
        "lengths": lengths,
        "pairs": len(lengths),
        "tokens": sum(c + r for c, r in lengths),
        "digest": digest,
    }


def choose_max_packed_length(lengths: list[tuple[int, int]], pairs_per_step: int, max_length: int) -> tuple[int, float]:
    """The smallest M >= 2 * max_length whose bins hold at least `pairs_per_step` pairs on average
    (the same seeded packing rmtrain uses), and that average."""
    lower = 2 * max_length
    try:
        from rmtrain.data.packing import pack_pairs

        def pairs_per_bin(m: int) -> float:
            return len(lengths) / len(pack_pairs(lengths, m, seed=0))
    except ImportError:  # packing code changed: estimate from the mean pair length
        mean_pair = sum(c + r for c, r in lengths) / len(lengths)

        def pairs_per_bin(m: int) -> float:
            return m / mean_pair

    if pairs_per_bin(lower) >= pairs_per_step:
        return lower, pairs_per_bin(lower)
    upper = lower
    while pairs_per_bin(upper) < pairs_per_step and upper < sum(c + r for c, r in lengths):
        upper *= 2
    while upper - lower > 1:
        mid = (lower + upper) // 2
        if pairs_per_bin(mid) >= pairs_per_step:
            upper = mid
        else:
            lower = mid
    return upper, pairs_per_bin(upper)


def build_model(size: str, tokenizer_dir: Path, max_length: int, cache_dir: Path) -> tuple[Path, int]:
    """A random-init LlamaForSequenceClassification (num_labels=1, zero score head), saved once:
    every arm loads these weights (rmtrain and the ceiling take the trunk, TRL the whole model)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    out_dir = (
        cache_dir
        / f"model-{size}-{len(tokenizer)}-{max_length}-{_file_digest([tokenizer_dir / 'tokenizer.json'], MODEL_SIZES[size], SEED)}"
    )
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    if not (out_dir / "config.json").is_file():
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=max_length,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=False,
            num_labels=1,
            use_cache=False,
            **MODEL_SIZES[size],
        )
        torch.manual_seed(SEED)
        model = LlamaForSequenceClassification(config)
        with torch.no_grad():
            model.score.weight.zero_()  # rmtrain's value head starts at zero; so does every arm's
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        model.save_pretrained(str(tmp))
        tmp.rename(out_dir)
    return out_dir, _count_params(LlamaConfig.from_pretrained(str(out_dir)))


def _count_params(config) -> int:
    """Trunk (embeddings, layers, final norm) plus the value head: what every arm trains."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return config.vocab_size * h + n * per_layer + h + h
