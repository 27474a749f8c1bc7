"""Collate preference pairs into one batch that scores chosen and rejected in a single forward pass."""

import torch

from rmtrain.errors import ConfigError
from rmtrain.scoring import pack_sequences, pad_sequences


def preference_collate_fn(instances: list, pad_token_id: int = 0, use_varlen_attn: bool | None = None) -> dict:
    """Pairs -> {'data': {...}, 'data_samples': None} for mmengine's BaseModel.train_step.

    The sequences are the chosen sides of all pairs, then the rejected sides in the same order.
    Padded: the items are pairs; `input_ids`/`attention_mask` [2 * pairs, longest], right-padded.
    Packed: the items are bins of pairs (a data set built with `use_varlen_attn=True`, see
    `rmtrain.data.packing`); all their sequences go into one padding-free row (`input_ids`,
    `position_ids`, `cu_seq_lens`). Which one follows from the items; `use_varlen_attn`, which
    configs written for XTuner pass, must agree with them.
    `margin` is [pairs] (0 where a pair has none); `num_tokens` counts real tokens.
    """
    packed = bool(instances) and isinstance(instances[0], (list, tuple))
    if use_varlen_attn is not None and bool(use_varlen_attn) != packed:
        raise ConfigError(
            f"preference_collate_fn(use_varlen_attn={use_varlen_attn}) received "
            f"{'packed bins' if packed else 'single pairs'}: the data set was built with use_varlen_attn={packed}"
        )
    pairs = [pair for bin_ in instances for pair in bin_] if packed else instances
    sequences = [pair["chosen_ids"] for pair in pairs] + [pair["rejected_ids"] for pair in pairs]
    if packed:
        data = pack_sequences(sequences)
    else:
        input_ids, attention_mask = pad_sequences(sequences, pad_token_id)
        data = {"input_ids": input_ids, "attention_mask": attention_mask}
    data["margin"] = torch.tensor([pair.get("margin") or 0.0 for pair in pairs], dtype=torch.float32)
    data["num_tokens"] = sum(len(seq) for seq in sequences)
    return {"data": data, "data_samples": None}
