"""Preference data: loading, map functions, tokenisation, collation, and the generated demo set."""

from rmtrain.data.collate import preference_collate_fn
from rmtrain.data.demo import build_demo_preference_data, build_demo_tokenizer
from rmtrain.data.loading import load_jsonl_dataset
from rmtrain.data.map_fns import (
    MAP_FNS,
    hh_rlhf_map_fn,
    intel_orca_dpo_map_fn,
    messages_preference_map_fn,
    orpo_dpo_mix_40k_map_fn,
    sharegpt_preference_map_fn,
    string_preference_map_fn,
)
from rmtrain.data.packing import (
    LengthGroupedSampler,
    PackedPreferenceDataset,
    pack_pairs,
)
from rmtrain.data.preference_dataset import PreferenceDataset, build_preference_dataset

__all__ = [
    "MAP_FNS",
    "LengthGroupedSampler",
    "PackedPreferenceDataset",
    "pack_pairs",
    "PreferenceDataset",
    "build_demo_preference_data",
    "build_demo_tokenizer",
    "build_preference_dataset",
    "hh_rlhf_map_fn",
    "intel_orca_dpo_map_fn",
    "load_jsonl_dataset",
    "messages_preference_map_fn",
    "orpo_dpo_mix_40k_map_fn",
    "preference_collate_fn",
    "sharegpt_preference_map_fn",
    "string_preference_map_fn",
]
