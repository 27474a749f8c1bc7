"""What the benchmark runs: the arms, model sizes, data sets and the settings every arm shares."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"  # the rmtrain arms' config files
DEFAULT_DATA_ROOT = os.environ.get("RMTRAIN_BENCH_DATA", str(REPO_ROOT.parent / "shared" / "data"))  # ../shared/data

ARMS = ("rmtrain_packed", "rmtrain_padded", "trl", "ceiling")
# Opt-in (--arms ...,trl_grouped): TRL with transformers' length-grouped sampler instead of random batches.
EXTRA_ARMS = ("trl_grouped",)
ALL_ARMS = ARMS[:3] + EXTRA_ARMS + ARMS[3:]
ARM_TITLES = {
    "rmtrain_packed": "rmtrain packed",
    "rmtrain_padded": "rmtrain padded",
    "trl": "TRL RewardTrainer",
    "trl_grouped": "TRL + group_by_length",
    "ceiling": "ceiling (bare model)",
}

# Llama shapes. "tiny" is for --smoke only.
MODEL_SIZES = {
    "10m": dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2
    ),
    "100m": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12
    ),
    "tiny": dict(
        hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
}

DATASETS = {
    "hh": dict(file="hh-rlhf/helpful-base/test.jsonl.gz", map_fn="hh_rlhf_map_fn"),
    "ultrafeedback": dict(
        file="ultrafeedback-binarized-sample/train_clean.jsonl.gz", map_fn="string_preference_map_fn"
    ),
}

# The tokenizer: rmtrain's demo special tokens and ChatML template, a BPE vocabulary trained on the
# texts of both benchmark data sets (always both, so the vocabulary does not depend on --datasets).
TOKENIZER_DATASETS = ("hh", "ultrafeedback")
REWARD_TOKEN = "<|reward|>"
SEED = 0
LOG_INTERVAL = 10  # rmtrain LoggerHook interval and TRL logging_steps: the same logging work in both
