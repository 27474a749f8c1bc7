"""`rmtrain convert pth_to_hf`: a training checkpoint -> a Hugging Face folder, verified by its scores.

InternLM2 trunks become `InternLM2ForRewardModel` (its modeling files are written beside the weights,
so plain transformers loads it with trust_remote_code=True); every other trunk becomes
`<Arch>ForSequenceClassification` with num_labels=1 and the value head as `score`.

The folder is written under a temporary name, loaded back through transformers' Auto classes and
scored against the training model before it takes its final name: an export that would score
differently never appears at SAVE_DIR.
"""

import copy
import os
import shutil

import torch
from mmengine.logging import print_log

from rmtrain.builder import build
from rmtrain.checkpoints import load_model_weights, read_model_state_dict
from rmtrain.config import load_config, scoring_inputs
from rmtrain.errors import RmtrainError
from rmtrain.scoring import encode_conversation, ensure_distinct_pad_token, pad_sequences, resolve_chat_template

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


class ConversionError(RmtrainError):
    """The checkpoint does not fit the config, or the exported folder does not score like the checkpoint."""


def _check_save_dir(save_dir: str, overwrite: bool) -> None:
    if os.path.isdir(save_dir) and os.listdir(save_dir) and not overwrite:
        raise ConversionError(f"{save_dir} exists and is not empty; pass --overwrite to replace it")


def _internlm2_reward_model(reward_model, reward_token_id):
    from rmtrain.model.internlm2 import InternLM2ForRewardModel

    config = copy.deepcopy(reward_model.model.config)
    config.reward_token_id = reward_token_id
    config.architectures = ["InternLM2ForRewardModel"]
    config.auto_map = {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
    }
    exported = InternLM2ForRewardModel(config)
    exported.model.load_state_dict(reward_model.model.state_dict(), strict=True)
    exported.v_head.weight.data.copy_(reward_model.v_head.weight.data)
    return exported


def _sequence_classifier(reward_model, tokenizer, reward_token_id):
    from transformers import AutoModelForSequenceClassification

    added_pad = ensure_distinct_pad_token(tokenizer, reward_token_id)
    config = copy.deepcopy(reward_model.model.config)
    config.num_labels = 1
    config.id2label = {0: "LABEL_0"}
    config.label2id = {"LABEL_0": 0}
    config.pad_token_id = None  # set below: a newly added pad id may lie beyond the trained embeddings
    config.reward_token_id = reward_token_id
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


def _readme(architecture: str, reward_token_id, pad_token_id, is_internlm2: bool) -> str:
    token_line = (
        f"The reward token (id {reward_token_id}) must end every scored sequence: render the chat with the "
        "tokenizer's chat template (saved here, the one used in training), tokenize without adding special "
        "tokens, and append the reward token id if it is not already last."
        if reward_token_id is not None
        else "Render the chat with the tokenizer's chat template (saved here) and tokenize without adding special tokens."
    )
    if is_internlm2:
        usage = """```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(PATH, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)
chat = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"}]
score = model.get_score(tokenizer, chat)            # appends the reward token for you
better = model.compare(tokenizer, chat_a, chat_b)   # True if chat_a scores higher
order = model.rank(tokenizer, [chat_a, chat_b, chat_c])
```"""
    else:
        usage = f"""```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(PATH)
tokenizer = AutoTokenizer.from_pretrained(PATH)
chat = [{{"role": "user", "content": "Hello"}}, {{"role": "assistant", "content": "Hi! How can I help?"}}]
text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
ids = tokenizer(text, add_special_tokens=False)["input_ids"]
{"if ids[-1] != model.config.reward_token_id:" + chr(10) + "    ids.append(model.config.reward_token_id)" if reward_token_id is not None else ""}
with torch.no_grad():
    score = model(torch.tensor([ids])).logits[0, 0].item()
```
Batches: pad with `tokenizer.pad_token_id` (id {pad_token_id}, never a real last token) on either side."""
    return f"""# Reward model ({architecture})

Exported by `rmtrain convert pth_to_hf`. The training config is saved as `rmtrain_config.py`.
One forward pass gives one scalar score per sequence, read at its last real token.

{token_line}

{usage}
"""


def _verify_ids(tokenizer, template, reward_token_id) -> list[list[int]]:
    return [
        encode_conversation(tokenizer, chat[:-1], chat[-1:], 10**6, reward_token_id, template).input_ids
        for chat in VERIFY_CONVERSATIONS
    ]


def _scores_of_training_model(reward_model, tokenizer, template, reward_token_id) -> torch.Tensor:
    input_ids, attention_mask = pad_sequences(_verify_ids(tokenizer, template, reward_token_id), pad_token_id=0)
    with torch.no_grad():
        return reward_model.score({"input_ids": input_ids, "attention_mask": attention_mask})


def _check_saved_tokenizer(folder: str, training_tokenizer, template, reward_token_id, is_internlm2: bool) -> None:
    """The tokenizer that AutoTokenizer reloads must tokenise exactly as the training one did."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(folder, trust_remote_code=is_internlm2)
    expected = _verify_ids(training_tokenizer, template, reward_token_id)
    got = _verify_ids(reloaded, reloaded.chat_template, reward_token_id)
    for index, (want, have) in enumerate(zip(expected, got)):
        if want != have:
            raise ConversionError(
                f"AutoTokenizer reloads the saved tokenizer as {type(reloaded).__name__}, which tokenises differently "
                f"from the training tokenizer ({type(training_tokenizer).__name__}): verification conversation {index} "
                f"gives {len(have)} tokens instead of {len(want)}. Train with the tokenizer class that matches the "
                "model type, or export with --no-verify and ship your own tokenizer."
            )


def _scores_of_export(folder: str, is_internlm2: bool, dtype, reward_token_id) -> torch.Tensor:
    """Load the folder fresh through transformers' Auto classes and score the same conversations."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=is_internlm2)
    if is_internlm2:
        # The folder's own code, as users load it: in this process rmtrain's registered InternLM2
        # classes would otherwise take precedence over the folder's auto_map.
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        model_class = get_class_from_dynamic_module("modeling_internlm2.InternLM2ForRewardModel", folder)
        model = model_class.from_pretrained(folder, dtype=dtype).eval()
        return torch.tensor(model.get_scores(tokenizer, VERIFY_CONVERSATIONS), dtype=torch.float32)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).eval()
    ids = _verify_ids(tokenizer, tokenizer.chat_template, reward_token_id)
    # Pad with the exported pad token and let the model find each row's last real token itself.
    input_ids, attention_mask = pad_sequences(ids, pad_token_id=model.config.pad_token_id)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


def convert_pth_to_hf(
    config: str,
    pth: str,
    save_dir: str,
    fp32: bool = False,
    max_shard_size: str = "2GB",
    verify: bool = True,
    overwrite: bool = False,
) -> float | None:
    """Export; returns the largest score difference found by the verification (None when skipped)."""
    cfg = load_config(config)
    _check_save_dir(save_dir, overwrite)
    state_dict = read_model_state_dict(pth)

    reward_model = build(cfg.model)
    load_model_weights(reward_model, state_dict, pth)
    reward_model.float().eval()

    inputs = scoring_inputs(cfg)
    tokenizer = build(cfg.train_dataloader.dataset.tokenizer)
    template = resolve_chat_template(tokenizer, inputs.chat_template)
    tokenizer.chat_template = template  # the export carries the template training used
    reward_token_id = inputs.reward_token_id
    reference = _scores_of_training_model(reward_model, tokenizer, template, reward_token_id)

    is_internlm2 = reward_model.model.config.model_type == "internlm2"
    if is_internlm2:
        exported = _internlm2_reward_model(reward_model, reward_token_id)
    else:
        exported = _sequence_classifier(reward_model, tokenizer, reward_token_id)
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
    shutil.copy(cfg.filename, os.path.join(partial, "rmtrain_config.py"))
    architecture = type(exported).__name__
    with open(os.path.join(partial, "README.md"), "w") as readme:
        readme.write(_readme(architecture, reward_token_id, tokenizer.pad_token_id, is_internlm2))

    largest = None
    if verify:
        try:
            largest = _verify(partial, tokenizer, template, reward_token_id, is_internlm2, dtype, reference, fp32)
        except Exception as error:
            failed = save_dir.rstrip("/") + ".unverified"
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(partial, failed)
            raise ConversionError(f"{error}; the unverified folder was left at {failed} for inspection") from error
    if os.path.isdir(save_dir):
        shutil.rmtree(save_dir)
    os.replace(partial, save_dir)
    print_log(f"saved {architecture} to {save_dir}", logger="current")
    return largest


def _verify(folder, tokenizer, template, reward_token_id, is_internlm2, dtype, reference, fp32) -> float:
    """Reload `folder` as users will and compare; raises ConversionError beyond the tolerance."""
    _check_saved_tokenizer(folder, tokenizer, template, reward_token_id, is_internlm2)
    exported_scores = _scores_of_export(folder, is_internlm2, dtype, reward_token_id)
    largest = (exported_scores - reference).abs().max().item()
    scale = max(1.0, reference.abs().max().item())
    tolerance = FP32_TOLERANCE if fp32 else BF16_TOLERANCE * scale
    print_log(
        f"verification: the folder reloaded through transformers scores {len(VERIFY_CONVERSATIONS)} "
        f"conversations within {largest:.3g} of the training model (tolerance {tolerance:.3g}, "
        f"{'fp32' if fp32 else 'bf16'})",
        logger="current",
    )
    if not largest <= tolerance:
        raise ConversionError(
            f"the exported model scores differ from the training model by {largest:.3g} (tolerance {tolerance:.3g})"
        )
    return largest
