"""`rmtrain convert pth_to_hf`: a training checkpoint -> a Hugging Face folder, verified by its scores.

InternLM2 trunks become `InternLM2ForRewardModel` (its modeling files are written beside the weights,
so plain transformers loads it with trust_remote_code=True); every other trunk becomes
`<Arch>ForSequenceClassification` with num_labels=1 and the value head as `score`.

The folder is portable: its chat template ends a scored conversation with the reward token and its
tokenizer adds no special tokens of its own (`rmtrain.scoring.make_tokenizer_portable`), and its
config.json says how servers should read the score (one regression label, no activation), so
clients that render the chat with the template and read the last token's logit (RewardBench, TRL,
OpenRLHF, vLLM, SGLang) get the scores training validated.

The folder is written under a temporary name, loaded back through transformers' Auto classes and
scored against the training model, by rmtrain's rule and the way clients do, before it takes its
final name: an export that would score differently never appears at SAVE_DIR. When the config has
validation data, the verified export scores it and the score mean and std go into config.json
(`rmtrain.normalization`).

LoRA checkpoints (adapters and head): the adapters are merged into the trunk (a QLoRA trunk is first
loaded again in full precision from the base weights) and the same kind of folder is written. With
`adapter=True` (`--adapter`) a PEFT adapter folder is written instead: the adapters and the value head
(as `score`, in modules_to_save), loaded with PEFT's AutoPeftModelForSequenceClassification on top of
the base model, verified the same way.
"""

import copy
import json
import logging
import os
import shutil

import torch
from mmengine.logging import print_log

from rmtrain.builder import build
from rmtrain.checkpoints import load_model_weights, read_model_state_dict
from rmtrain.config import EXPORT_SETTINGS_FILE, export_settings, load_config, scoring_inputs
from rmtrain.engine.precision import autocast_context
from rmtrain.errors import RmtrainError
from rmtrain.normalization import measure_normalization, write_normalization
from rmtrain.scoring import (
    encode_conversation,
    encode_reference_sequence,
    ensure_distinct_pad_token,
    length_sorted_batches,
    make_tokenizer_portable,
    pad_sequences,
    resolve_chat_template,
    score_batch,
)

# (prompt, reference, candidate) for reference-conditioned (POLAR) models, of different lengths.
VERIFY_REFERENCE_EXAMPLES = [
    ("What is 2 + 3?", "2 + 3 = 5.", "5"),
    ("What is 2 + 3?", "2 + 3 = 5.", "2 + 3 = 6."),
    ("Name three colours, separated by commas.", "red, green, blue", "Well, I like the colour of the sea best."),
]

# Conversations of different lengths: a batch of them exercises padding in the exported model.
VERIFY_CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}],
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 6."}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name three colours, separated by commas."},
        {"role": "assistant", "content": "red, green, blue"},
    ],
    [
        {"role": "user", "content": "Reply in one word: what colour is the sky?"},
        {
            "role": "assistant",
            "content": "Well, it depends on the time of day, the weather and where you are standing.",
        },
    ],
]

BF16_TOLERANCE = 5e-2  # relative to the largest score magnitude (at least 1)
FP32_TOLERANCE = 1e-4
STATS_BATCH_SIZE = 16  # sequences per forward pass when the validation split is scored


def _score_head_config(config, pad_token_id, reward_token_id, value_head_prefix: str) -> None:
    """What servers and trainers read from config.json to return the raw score (set in place).

    One label, `problem_type="regression"`: transformers' text-classification pipeline and vLLM's
    classify pooler then apply no sigmoid; `id2label`/`label2id` name it; `value_head_prefix` names the
    head for OpenRLHF; `pad_token_id` is never a real last token; `reward_token_id` for the record.
    """
    config.num_labels = 1
    config.id2label = {0: "LABEL_0"}
    config.label2id = {"LABEL_0": 0}
    config.problem_type = "regression"
    config.value_head_prefix = value_head_prefix
    config.pad_token_id = pad_token_id
    config.reward_token_id = reward_token_id


class ConversionError(RmtrainError):
    """The checkpoint does not fit the config, or the exported folder does not score like the checkpoint."""


def _check_save_dir(save_dir: str, overwrite: bool) -> None:
    if os.path.isdir(save_dir) and os.listdir(save_dir) and not overwrite:
        raise ConversionError(f"{save_dir} exists and is not empty; pass --overwrite to replace it")


def _internlm2_reward_model(reward_model, tokenizer, reward_token_id):
    from rmtrain.model.internlm2 import InternLM2ForRewardModel

    config = copy.deepcopy(reward_model.model.config)
    _score_head_config(config, tokenizer.pad_token_id, reward_token_id, value_head_prefix="v_head")
    config.architectures = ["InternLM2ForRewardModel"]
    # AutoModelForSequenceClassification too: the text-classification pipeline (RewardBench) and TRL load that.
    config.auto_map = {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
        "AutoModelForSequenceClassification": "modeling_internlm2.InternLM2ForRewardModel",
    }
    exported = InternLM2ForRewardModel(config)
    exported.model.load_state_dict(reward_model.model.state_dict(), strict=True)
    exported.v_head.weight.data.copy_(reward_model.v_head.weight.data)
    return exported


def _adapter_classifier(reward_model, tokenizer, reward_token_id):
    """A PEFT sequence classifier over the base model: the trained adapters, the value head as `score`."""
    from rmtrain.model.lora import adapter_classifier

    identity = reward_model.base_identity.identity
    if identity.get("fingerprinted", "").startswith("tensors"):
        raise ConversionError(
            f"--adapter: the base model ({identity['name_or_path']}) was built from a config and has no weight "
            "files an adapter folder could name; export the merged folder instead (without --adapter)"
        )
    ensure_distinct_pad_token(tokenizer, reward_token_id)
    return adapter_classifier(
        reward_model.model, reward_model.v_head, identity["name_or_path"], pad_token_id=tokenizer.pad_token_id
    )


def _sequence_classifier(reward_model, tokenizer, reward_token_id):
    from transformers import AutoModelForSequenceClassification

    added_pad = ensure_distinct_pad_token(tokenizer, reward_token_id)
    config = copy.deepcopy(reward_model.model.config)
    # pad_token_id is set below: a newly added pad id may lie beyond the trained embeddings
    _score_head_config(config, None, reward_token_id, value_head_prefix="score")
    config.architectures = None  # set by from_config / save_pretrained
    exported = AutoModelForSequenceClassification.from_config(config)
    if not hasattr(exported, "score"):
        raise ConversionError(f"{type(exported).__name__} has no `score` head; this architecture cannot be exported")
    exported.base_model.load_state_dict(reward_model.model.state_dict(), strict=True)
    exported.score.weight.data.copy_(reward_model.v_head.weight.data)
    if added_pad and tokenizer.pad_token_id >= exported.get_input_embeddings().num_embeddings:
        exported.resize_token_embeddings(len(tokenizer))
    exported.config.pad_token_id = tokenizer.pad_token_id
    return exported


REFERENCE_README = """
## A reference-conditioned model (POLAR)

This model scores a candidate answer against a reference answer, on sequences laid out with no chat
template (`rmtrain.scoring.encode_reference_sequence`): `[BOS] prompt \\n reference <|reward|> prompt \\n
candidate <reward token>`, each part tokenised on its own without special tokens; the reference and the candidate
keep their first {max_response_length} tokens (`reference_max_response_length` in config.json), the prompt is
cut from the left. `rmtrain eval` and `rmtrain serve` apply this rule to data with a `reference` field.
"""


def _readme(architecture: str, reward_token_id, pad_token_id, is_internlm2: bool) -> str:
    token_line = (
        f"Every scored conversation ends with the reward token (id {reward_token_id}): the chat template saved "
        "here writes it after the last message when no generation prompt is asked for, and the tokenizer adds "
        "no special tokens of its own, so `apply_chat_template(chat, tokenize=False)` followed by the tokenizer "
        "(with or without `add_special_tokens`) gives the tokens training scored."
        if reward_token_id is not None
        else "The score is read at the last token of the chat rendered by the chat template saved here (the "
        "template used in training); the tokenizer adds no special tokens of its own, so "
        "`apply_chat_template(chat, tokenize=False)` followed by the tokenizer (with or without "
        "`add_special_tokens`) gives the tokens training scored."
    )
    if is_internlm2:
        usage = """```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)
chat = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"}]
score = model.get_score(tokenizer, chat)
better = model.compare(tokenizer, chat_a, chat_b)   # True if chat_a scores higher
order = model.rank(tokenizer, [chat_a, chat_b, chat_c])
```
`AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)` loads the same class, so the
`text-classification` pipeline and TRL read its `logits[:, 0]` like a sequence classifier's."""
    else:
        usage = """```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(PATH)
tokenizer = AutoTokenizer.from_pretrained(PATH)
chat = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"}]
text = tokenizer.apply_chat_template(chat, tokenize=False)
with torch.no_grad():
    score = model(**tokenizer([text], return_tensors="pt")).logits[0, 0].item()
```"""
    return f"""# Reward model ({architecture})

Exported by `rmtrain convert pth_to_hf`. The training config is saved as `rmtrain_config.py`.
One forward pass gives one scalar score per sequence, read at its last real token.

{token_line}

{usage}

Batches: pad with `tokenizer.pad_token_id` (id {pad_token_id}, never a real last token) on either side.
config.json has one label with `problem_type: "regression"`, so the `text-classification` pipeline and vLLM's
`/classify` return the raw score (no sigmoid).
"""


def _adapter_readme(base: str, reward_token_id, pad_token_id) -> str:
    return f"""# Reward model: LoRA adapters and value head (PEFT)

Exported by `rmtrain convert pth_to_hf --adapter`. The training config is saved as `rmtrain_config.py`.
This folder holds the trained LoRA adapters and the trained value head (`score`, saved through
`modules_to_save`); the frozen base model is `{base}`, which PEFT loads from `adapter_config.json`.

```python
import torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer
model = AutoPeftModelForSequenceClassification.from_pretrained(PATH, num_labels=1, pad_token_id={pad_token_id})
tokenizer = AutoTokenizer.from_pretrained(PATH)
chat = [{{"role": "user", "content": "Hello"}}, {{"role": "assistant", "content": "Hi! How can I help?"}}]
text = tokenizer.apply_chat_template(chat, tokenize=False)
with torch.no_grad():
    score = model(**tokenizer([text], return_tensors="pt")).logits[0, 0].item()
```
`num_labels=1` gives the base model a one-output head for the saved `score` (the base model's own config
does not know it is a reward model); `pad_token_id` lets it find each row's last real token in a batch.
The scored text ends with the reward token (id {reward_token_id}) through the chat template saved here.
For a self-contained folder that plain transformers loads, export without `--adapter` (merged).
"""


def _verify_ids(tokenizer, template, inputs) -> list[list[int]]:
    """The verification examples as token ids, by the config's scoring rule (chat, or reference for POLAR)."""
    reward_token_id = inputs.reward_token_id
    if inputs.is_reference:
        return [
            encode_reference_sequence(
                tokenizer, prompt, reference, response, 10**6, reward_token_id, inputs.max_response_length
            ).input_ids
            for prompt, reference, response in VERIFY_REFERENCE_EXAMPLES
        ]
    return [
        encode_conversation(tokenizer, chat[:-1], chat[-1:], 10**6, reward_token_id, template).input_ids
        for chat in VERIFY_CONVERSATIONS
    ]


def _scores_of_training_model(reward_model, ids: list[list[int]]) -> torch.Tensor:
    input_ids, attention_mask = pad_sequences(ids, pad_token_id=0)
    with torch.no_grad():
        return reward_model.score({"input_ids": input_ids, "attention_mask": attention_mask})


def _client_texts(tokenizer) -> list[str]:
    """The verification conversations as clients render them: the folder's template, no generation prompt."""
    return [tokenizer.apply_chat_template(chat, tokenize=False) for chat in VERIFY_CONVERSATIONS]


def _check_saved_tokenizer(tokenizer, training_tokenizer_class, expected: list[list[int]], inputs) -> None:
    """The reloaded tokenizer must give the training ids, by rmtrain's rule and the way clients tokenise."""
    got = {"rmtrain's rule": _verify_ids(tokenizer, tokenizer.chat_template, inputs)}
    for add_special_tokens in (False, True) if not inputs.is_reference else ():  # reference models: no template
        encoded = tokenizer(_client_texts(tokenizer), add_special_tokens=add_special_tokens)["input_ids"]
        got[f"the chat template's text tokenised with add_special_tokens={add_special_tokens}"] = encoded
    for how, ids in got.items():
        for index, (want, have) in enumerate(zip(expected, ids)):
            if list(want) != list(have):
                raise ConversionError(
                    f"AutoTokenizer reloads the saved tokenizer as {type(tokenizer).__name__}, which tokenises "
                    f"differently from the training tokenizer ({training_tokenizer_class.__name__}) by {how}: "
                    f"verification conversation {index} gives {len(have)} tokens instead of {len(want)} (starts "
                    f"{list(have)[:4]}, ends {list(have)[-4:]}; training: starts {list(want)[:4]}, ends "
                    f"{list(want)[-4:]}). Train with the tokenizer class that matches the model type, or export "
                    "with --no-verify and ship your own tokenizer."
                )


def _load_export(folder: str, is_internlm2: bool, dtype, adapter: bool = False):
    """The folder fresh through transformers' Auto classes (PEFT's for an adapter folder), as users load it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=is_internlm2)
    if adapter:
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=dtype
        )
        # The classifier with the adapters in place: scores as the PEFT model does, exposes `score` and its trunk.
        return model.get_base_model().eval(), tokenizer
    if is_internlm2:
        # The folder's own code: in this process rmtrain's registered InternLM2 classes would
        # otherwise take precedence over the folder's auto_map.
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        model_class = get_class_from_dynamic_module("modeling_internlm2.InternLM2ForRewardModel", folder)
        return model_class.from_pretrained(folder, dtype=dtype).eval(), tokenizer
    return AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).eval(), tokenizer


def _scores_of_export(model, tokenizer, is_internlm2: bool, inputs) -> dict[str, torch.Tensor]:
    """The verification conversations scored by the reloaded folder: rmtrain's way and the clients' ways.

    Under autocast in the folder's dtype, as `rmtrain eval` scores it (the training model's reference
    scores are fp32, the most exact ones).
    """
    parameter = next(model.parameters())
    with torch.no_grad(), autocast_context(parameter.device.type, parameter.dtype):
        if inputs.is_reference:  # the reference layout, padded; the model's forward finds each row's last token
            input_ids, attention_mask = pad_sequences(_verify_ids(tokenizer, None, inputs), pad_token_id=0)
            return {
                "the reference rule": model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
            }
        if is_internlm2:
            ours = torch.tensor(model.get_scores(tokenizer, VERIFY_CONVERSATIONS), dtype=torch.float32)
        else:
            # Padded with the exported pad token: the model finds each row's last real token itself.
            ids = _verify_ids(tokenizer, tokenizer.chat_template, inputs)
            input_ids, attention_mask = pad_sequences(ids, pad_token_id=model.config.pad_token_id)
            ours = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        scores = {"rmtrain's rule": ours}
        for add_special_tokens in (False, True):
            batch = tokenizer(
                _client_texts(tokenizer), add_special_tokens=add_special_tokens, padding=True, return_tensors="pt"
            )
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            scores[f"clients' (add_special_tokens={add_special_tokens})"] = logits[:, 0].float()
    return scores


def _score_modules(model, is_internlm2: bool):
    """(trunk, value head) of a reloaded export, for the shared scoring rule."""
    return (model.model, model.v_head) if is_internlm2 else (model.base_model, model.score)


def _validation_scores(cfg, model, is_internlm2: bool) -> tuple[list[float], str] | None:
    """Scores of the config's validation pairs by the reloaded export, and a description; None without any."""
    val_dataloader = cfg.get("val_dataloader")
    if not val_dataloader or not val_dataloader.get("dataset"):
        return None
    # The pairs exactly as validation built them, one sequence per side (packing changes no score).
    try:
        pairs = build(dict(val_dataloader.dataset, use_varlen_attn=False))
    except (RmtrainError, OSError, ValueError) as error:
        print_log(
            f"normalisation statistics not measured: the validation data could not be built ({error}); "
            "measure them with `rmtrain eval SAVE_DIR DATA --write-stats`",
            logger="current",
            level=logging.WARNING,
        )
        return None
    sequences = list(pairs.pairs["chosen_ids"]) + list(pairs.pairs["rejected_ids"])
    trunk, head = _score_modules(model, is_internlm2)
    parameter = next(trunk.parameters())
    scores = [0.0] * len(sequences)
    for batch in length_sorted_batches([len(seq) for seq in sequences], STATS_BATCH_SIZE):
        with autocast_context(parameter.device.type, parameter.dtype):  # as `rmtrain eval` scores
            batch_scores = score_batch(trunk, head, [sequences[i] for i in batch], 0, parameter.device)
        for index, score in zip(batch, batch_scores):
            scores[index] = score
    return scores, f"the {len(pairs)} pairs of the training config's validation split ({pairs.summary['source']})"


def convert_pth_to_hf(
    config: str,
    pth: str,
    save_dir: str,
    fp32: bool = False,
    max_shard_size: str = "2GB",
    verify: bool = True,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
    adapter: bool = False,
) -> float | None:
    """Export; returns the largest score difference found by the verification (None when skipped)."""
    cfg = load_config(config)
    _check_save_dir(save_dir, overwrite)
    state_dict = read_model_state_dict(pth, trust_checkpoint)

    reward_model = build(cfg.model)
    load_model_weights(reward_model, state_dict, pth)
    reward_model.eval()
    if adapter and reward_model.lora is None:
        raise ConversionError(f"--adapter writes LoRA adapters, but {pth} is a full (non-LoRA) checkpoint")

    inputs = scoring_inputs(cfg)
    tokenizer = build(cfg.train_dataloader.dataset.tokenizer)
    training_tokenizer_class = type(tokenizer)
    # Reference-conditioned models use no chat template: their tokenizer is exported as it is.
    template = None if inputs.is_reference else resolve_chat_template(tokenizer, inputs.chat_template)
    reward_token_id = inputs.reward_token_id
    expected_ids = _verify_ids(tokenizer, template, inputs)  # before the export changes the tokenizer
    if reward_model.lora is not None and reward_model.quantized:
        # The export is full precision: verified against the trained adapters on the full-precision base.
        quantised = _scores_of_training_model(reward_model, expected_ids)
        reward_model.dequantize_trunk()
        full_precision = _scores_of_training_model(reward_model.float(), expected_ids)
        print_log(
            "QLoRA: the adapters on the base model loaded in full precision score the verification conversations "
            f"within {(full_precision - quantised).abs().max().item():.3g} of the 4/8-bit training model; "
            "the export is verified against the full-precision scores",
            logger="current",
        )
    reward_model.float()
    reference = _scores_of_training_model(reward_model, expected_ids)

    is_internlm2 = reward_model.model.config.model_type == "internlm2"
    if adapter and is_internlm2:
        raise ConversionError("--adapter: InternLM2 has no sequence-classification class for PEFT; export merged")
    if adapter:
        exported = _adapter_classifier(reward_model, tokenizer, reward_token_id)
    else:
        reward_model.merge_lora()  # nothing to do for a full checkpoint
        if is_internlm2:
            exported = _internlm2_reward_model(reward_model, tokenizer, reward_token_id)
        else:
            exported = _sequence_classifier(reward_model, tokenizer, reward_token_id)
    if inputs.is_reference:
        # where `rmtrain eval` and `rmtrain serve` read that the folder scores with the reference rule
        exported.config.reference_max_response_length = inputs.max_response_length
    else:
        make_tokenizer_portable(tokenizer, template, reward_token_id)
    dtype = torch.float32 if fp32 else torch.bfloat16
    exported.to(dtype)

    partial = save_dir.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    exported.save_pretrained(partial, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(partial)
    if is_internlm2:
        from rmtrain.model.internlm2 import INTERNLM2_MODELING_FILES

        for path in INTERNLM2_MODELING_FILES:
            shutil.copy(path, partial)
    shutil.copy(cfg.filename, os.path.join(partial, "rmtrain_config.py"))  # the record; never executed on load
    with open(os.path.join(partial, EXPORT_SETTINGS_FILE), "w", encoding="utf-8") as settings:
        json.dump(export_settings(cfg, template), settings, indent=2)
        settings.write("\n")
    architecture = "PEFT LoRA adapters and value head" if adapter else type(exported).__name__
    with open(os.path.join(partial, "README.md"), "w") as readme:
        if adapter:
            readme.write(
                _adapter_readme(
                    exported.peft_config["default"].base_model_name_or_path, reward_token_id, tokenizer.pad_token_id
                )
            )
        else:
            readme.write(_readme(architecture, reward_token_id, tokenizer.pad_token_id, is_internlm2))
            if inputs.is_reference:
                readme.write(REFERENCE_README.format(max_response_length=inputs.max_response_length))

    largest = None
    if verify:
        try:
            largest, reloaded = _verify(
                partial, training_tokenizer_class, expected_ids, inputs, is_internlm2, dtype, reference, fp32, adapter
            )
            if adapter:
                print_log(
                    "normalisation statistics not measured: an adapter folder has no config.json to hold them "
                    "(the merged export, without --adapter, gets them)",
                    logger="current",
                )
            else:
                _write_validation_statistics(cfg, partial, reloaded, is_internlm2)
        except Exception as error:
            failed = save_dir.rstrip("/") + ".unverified"
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(partial, failed)
            raise ConversionError(f"{error}; the unverified folder was left at {failed} for inspection") from error
    else:
        print_log(
            "normalisation statistics not measured (--no-verify); measure them with "
            f"`rmtrain eval {save_dir} DATA --write-stats`",
            logger="current",
        )
    if os.path.isdir(save_dir):
        shutil.rmtree(save_dir)
    os.replace(partial, save_dir)
    print_log(f"saved {architecture} to {save_dir}", logger="current")
    return largest


def _write_validation_statistics(cfg, folder: str, model, is_internlm2: bool) -> None:
    """Score mean and std of the validation split by the verified export into config.json and README.md."""
    measured = _validation_scores(cfg, model, is_internlm2)
    if measured is None:
        return
    scores, description = measured
    stats = measure_normalization(scores)
    write_normalization(folder, stats, description)
    print_log(
        f"normalisation statistics: mean {stats.mean:.4g}, std {stats.std:.4g} of {len(scores)} scores of {description}, "
        "written to config.json (mean, std, normalize_reward=false) and README.md",
        logger="current",
    )


def _verify(
    folder, training_tokenizer_class, expected_ids, inputs, is_internlm2, dtype, reference, fp32, adapter=False
):
    """Reload `folder` as users will and compare; (largest difference, the reloaded model). ConversionError beyond the tolerance."""
    model, tokenizer = _load_export(folder, is_internlm2, dtype, adapter)
    _check_saved_tokenizer(tokenizer, training_tokenizer_class, expected_ids, inputs)
    scale = max(1.0, reference.abs().max().item())
    tolerance = FP32_TOLERANCE if fp32 else BF16_TOLERANCE * scale
    largest = 0.0
    for how, scores in _scores_of_export(model, tokenizer, is_internlm2, inputs).items():
        difference = (scores - reference).abs().max().item()
        if not difference <= tolerance:
            raise ConversionError(
                f"the exported model scored {how} differs from the training model by {difference:.3g} "
                f"(tolerance {tolerance:.3g})"
            )
        largest = max(largest, difference)
    print_log(
        f"verification: the folder reloaded through {'PEFT' if adapter else 'transformers'} scores "
        f"{len(expected_ids)} sequences within {largest:.3g} of the training model, "
        + (
            "by the reference rule (prompt, reference, <|reward|>, prompt, candidate)"
            if inputs.is_reference
            else "by rmtrain's rule and as clients do (chat template text, tokenised with and without special tokens)"
        )
        + f" (tolerance {tolerance:.3g}, {'fp32' if fp32 else 'bf16'})",
        logger="current",
    )
    return largest, model
