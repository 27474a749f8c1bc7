"""Collate preference pairs into one batch that scores chosen and rejected in a single forward pass."""

import torch

from rmtrain.scoring import pad_sequences


def preference_collate_fn(instances: list[dict], pad_token_id: int = 0, use_varlen_attn: bool = False) -> dict:
    """Pairs -> {'data': {...}, 'data_samples': None} for mmengine's BaseModel.train_step.

    data['input_ids'] and data['attention_mask'] are [2 * pairs, longest]: rows 0..B-1 are the
    chosen sides, rows B..2B-1 the rejected sides of the same pairs, right-padded.
    data['margin'] is [pairs] (0 where a pair has none).
    """
    if use_varlen_attn:
        raise NotImplementedError("packed (varlen) batches are not ready yet")
    sequences = [item["chosen_ids"] for item in instances] + [item["rejected_ids"] for item in instances]
    input_ids, attention_mask = pad_sequences(sequences, pad_token_id)
    margin = torch.tensor([item.get("margin") or 0.0 for item in instances], dtype=torch.float32)
    return {"data": {"input_ids": input_ids, "attention_mask": attention_mask, "margin": margin}, "data_samples": None}
