"""The data of each suite: what both arms train on (through the recipe's own data pipeline) and the eval sets.

generated  the SmolLM2 demo recipe's own pairs (1,120 train, 124 val); eval on the recipe's val split and
           on 300 generated pairs of another seed (UNSEEN_SEED).
real       the UltraFeedback sample's train file, subsampled (REAL_TRAIN_RECORDS records, a tenth held out
           by the recipe's split), pairs whose both sides fit REAL_MAX_LENGTH tokens (nothing is cut or
           dropped by either trainer); eval on the sample's eval file and on HH-RLHF helpful-base.

Records are rmtrain's message format (prompt / chosen / rejected lists of role/content messages), which
TRL reads as its conversational format: both arms render them with the same chat template.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from functools import lru_cache

RECIPE = "smollm2_135m_instruct_reward_full_demo"
UNSEEN_SEED = 1000
UNSEEN_PAIRS = 300
DATA_ROOT = os.environ.get("RMTRAIN_QUALITY_DATA", os.path.join(os.path.dirname(__file__), "../../../shared/data"))
UF_TRAIN = "ultrafeedback-binarized-sample/train_clean.jsonl.gz"
UF_EVAL = "ultrafeedback-binarized-sample/eval_clean.jsonl.gz"
HH_HELPFUL = "hh-rlhf/helpful-base/test.jsonl.gz"
REAL_MAX_LENGTH = 384  # training max_length of the real suite (tokens per side, the reward token included)
# At 512 (448 or 320 pairs) the TRL arm's longest batches, 32 sides of 512 tokens without activation
# checkpointing, took more than the 24 GiB this machine has beside other work: it was killed for memory.
# 304 train pairs (19 steps of 16) + 34 held out by the recipe's val split: 338 of the 349 pairs that fit 384
# tokens, about 7 minutes of training per arm on the idle 2-core machine (10 steps did not move either arm
# off chance).
REAL_TRAIN_RECORDS = 338
REAL_EVAL_MAX_LENGTH = 768  # eval pairs longer than this (either side) are left out, so no arm cuts any
# Every UltraFeedback eval pair that fits (157 of 200) and 300 HH-RLHF pairs: one binomial standard error is
# then about 0.04 and 0.03 (forward passes only, a minute or two per arm).
REAL_EVAL_PAIRS = {"ultrafeedback_eval": 157, "hh_helpful": 300}


def _read_jsonl_gz(path: str) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@lru_cache(maxsize=1)
def _tokenizer():
    from rmtrain.assets import smollm2_135m_instruct_tokenizer

    return smollm2_135m_instruct_tokenizer()


def rendered_length(messages: list[dict]) -> int:
    """Tokens of a conversation rendered with SmolLM2's chat template (what TRL scores; rmtrain adds at most 1)."""
    tokenizer = _tokenizer()
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _fits(record: dict, max_length: int) -> bool:
    return all(rendered_length(record["prompt"] + record[side]) < max_length for side in ("chosen", "rejected"))


def _mapped(path: str, map_fn_name: str) -> list[dict]:
    from rmtrain.data import map_fns

    map_fn = getattr(map_fns, map_fn_name)
    out = []
    for raw in _read_jsonl_gz(path):
        try:
            record = map_fn(raw)
        except Exception:  # noqa: BLE001 - a record the map function refuses is not used (counted in the doc)
            continue
        out.append({key: record[key] for key in ("prompt", "chosen", "rejected")})
    return out


def _subsample(records: list[dict], count: int, max_length: int, seed: int) -> list[dict]:
    """`count` records that fit `max_length`, in a seeded random order of the file (deterministic)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    picked = []
    for index in order:
        if _fits(records[index], max_length):
            picked.append(records[index])
            if len(picked) == count:
                break
    return picked


def ultrafeedback_train_records(num_pairs: int = REAL_TRAIN_RECORDS, seed: int = 0, data_root: str = DATA_ROOT):
    """The real suite's training records, as a `datasets.Dataset` (a config's `dataset=dict(type=...)`)."""
    import datasets

    records = _mapped(os.path.join(data_root, UF_TRAIN), "string_preference_map_fn")
    return datasets.Dataset.from_list(_subsample(records, num_pairs, REAL_MAX_LENGTH, seed))


def eval_sets(suite: str, data_root: str = DATA_ROOT) -> dict[str, list[dict]]:
    """name -> records of each eval set of `suite` (the recipe's val split is built by the arms themselves)."""
    if suite == "generated":
        from rmtrain.data.demo import build_demo_preference_data

        unseen = build_demo_preference_data(num_pairs=UNSEEN_PAIRS, seed=UNSEEN_SEED).to_list()
        return {"unseen": [{key: r[key] for key in ("prompt", "chosen", "rejected")} for r in unseen]}
    if suite == "real":
        files = {
            "ultrafeedback_eval": (UF_EVAL, "string_preference_map_fn"),
            "hh_helpful": (HH_HELPFUL, "hh_rlhf_map_fn"),
        }
        return {
            name: _subsample(
                _mapped(os.path.join(data_root, path), map_fn), REAL_EVAL_PAIRS[name], REAL_EVAL_MAX_LENGTH, 0
            )
            for name, (path, map_fn) in files.items()
        }
    raise ValueError(f"unknown suite {suite!r}: generated or real")


def data_options(suite: str) -> dict:
    """cfg-options that point the demo recipe at the suite's training data (none for the generated suite)."""
    if suite == "generated":
        return {}
    options = {}
    for loader in ("train_dataloader", "val_dataloader"):
        options[f"{loader}.dataset.dataset.type"] = "tools.quality.suites.ultrafeedback_train_records"
        options[f"{loader}.dataset.dataset.num_pairs"] = REAL_TRAIN_RECORDS
        options[f"{loader}.dataset.dataset.seed"] = 0
        options[f"{loader}.dataset.max_length"] = REAL_MAX_LENGTH
    return options


def eval_max_length(suite: str, train_max_length: int) -> int:
    return REAL_EVAL_MAX_LENGTH if suite == "real" else train_max_length
