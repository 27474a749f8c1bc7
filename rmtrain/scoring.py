"""The scoring rule, in one place: how a conversation becomes token ids, and where its score is read.

Training, conversion and evaluation all call these functions, so a reward model is always scored
on the same tokens it was trained on:

1. The chat is rendered with a chat template (`render_chat`, see `resolve_chat_template`).
2. It is tokenised without adding special tokens (the template carries them), truncated to
   `max_length` by cutting the prompt from the left first and the response from the right only
   when the response alone is too long (`encode_conversation`).
3. The reward token, when the model has one, is appended unless it is already last.
4. Rows are right-padded and carry an attention mask (`pad_sequences`); the score is read at the
   last attended position (`score_positions`), never at a pad token.
5. An exported model's pad token is never a real sequence's last token (`ensure_distinct_pad_token`).

Reference-conditioned models (POLAR) score a candidate against a reference answer instead, with
their own layout and no chat template (`encode_reference_sequence`); steps 3 to 5 are the same.
"""

import json
import os
from dataclasses import dataclass

import torch

from rmtrain.errors import ConfigError

# Templates a config can name when the tokenizer has none (or to override it).
NAMED_CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "internlm2": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "plain": (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + '\n\n' }}"
        "{% else %}{{ message['role'] + ': ' + message['content'] + '\n\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
    ),
}


NO_REWARD_TOKEN_XTUNER = -1  # how XTuner's configs write "no reward token"


def reward_token_or_none(reward_token_id: int | None) -> int | None:
    """THE "no reward token" rule: None (rmtrain's value) or XTuner's -1 -> None; any other id unchanged."""
    if reward_token_id is None or reward_token_id == NO_REWARD_TOKEN_XTUNER:
        return None
    if isinstance(reward_token_id, bool) or not isinstance(reward_token_id, int) or reward_token_id < 0:
        raise ConfigError(f"reward_token_id must be a token id (an int >= 0) or None, got {reward_token_id!r}")
    return reward_token_id


def resolve_chat_template(tokenizer, chat_template: str | None = None) -> str:
    """The Jinja template to render chats with.

    A template named or written in the config wins; otherwise the tokenizer's own; otherwise an
    error, since guessing a template silently would train on a format the model never saw.
    """
    if chat_template:
        return NAMED_CHAT_TEMPLATES.get(chat_template, chat_template)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise ConfigError(
        f"the tokenizer ({type(tokenizer).__name__}) has no chat template; name one in the config "
        f"with chat_template=... (one of {', '.join(NAMED_CHAT_TEMPLATES)}) or give a Jinja string"
    )


def render_chat(tokenizer, messages, chat_template: str, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages),
        chat_template=chat_template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


@dataclass
class EncodedConversation:
    input_ids: list[int]
    prompt_tokens_cut: int  # tokens removed from the left of the prompt
    response_tokens_cut: int  # tokens removed from the right of the response


def _prompt_token_count(tokenizer, full_text: str, prompt_text: str, full_ids: list[int], offsets) -> int:
    """How many leading tokens of `full_text` belong to the prompt."""
    # Normally the prompt rendering is a prefix of the full chat; for templates where it is not,
    # the shared beginning is the prompt part.
    prompt_chars = len(os.path.commonprefix([prompt_text, full_text]))
    if offsets is not None:
        return sum(1 for start, _end in offsets if start < prompt_chars)
    if prompt_chars == 0:
        return 0
    return min(len(tokenizer.encode(prompt_text, add_special_tokens=False)), len(full_ids))


def encode_conversation(
    tokenizer,
    prompt,
    response,
    max_length: int,
    reward_token_id: int | None,
    chat_template: str,
) -> EncodedConversation:
    """Token ids of prompt + response, at most `max_length` long including the reward token.

    Truncation never removes a whole response: the prompt is cut from the left first (a leading
    BOS token is kept), and only a response that alone exceeds the budget is cut, from the right.
    """
    reward_token_id = reward_token_or_none(reward_token_id)
    budget = max_length - (1 if reward_token_id is not None else 0)
    full_text = render_chat(tokenizer, [*prompt, *response], chat_template)
    prompt_text = render_chat(tokenizer, prompt, chat_template, add_generation_prompt=True) if prompt else ""
    try:
        # verbose=False: the untruncated text may exceed the tokenizer's model_max_length, which is fine here
        encoded = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = encoded["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
        encoded = tokenizer(full_text, add_special_tokens=False, verbose=False)
        offsets = None
    ids = list(encoded["input_ids"])
    num_prompt = _prompt_token_count(tokenizer, full_text, prompt_text, ids, offsets)

    prompt_cut = response_cut = 0
    excess = len(ids) - budget
    if excess > 0:
        keep_bos = 1 if ids and ids[0] == tokenizer.bos_token_id and num_prompt > 0 else 0
        prompt_cut = min(excess, num_prompt - keep_bos)
        ids = ids[:keep_bos] + ids[keep_bos + prompt_cut :]
        response_cut = excess - prompt_cut
        if response_cut > 0:
            ids = ids[: len(ids) - response_cut]
    return EncodedConversation(_end_with_reward_token(ids, reward_token_id), prompt_cut, response_cut)


def _end_with_reward_token(ids: list[int], reward_token_id: int | None) -> list[int]:
    """THE reward-token rule: append it unless it is already last (a portable template writes it)."""
    if reward_token_id is not None and (not ids or ids[-1] != reward_token_id):
        ids.append(reward_token_id)
    return ids


REFERENCE_SEPARATOR = "<|reward|>"  # between the reference part and the candidate part (POLAR's layout)
REFERENCE_WRAPPERS = ("sft", "pretrain")


def _joined_text(messages) -> str:
    """Message contents joined with newlines (a string stays as it is); reference models use no chat template."""
    if isinstance(messages, str):
        return messages
    return "\n".join(message["content"] for message in messages)


@dataclass
class EncodedReferenceSequence:
    input_ids: list[int]
    prompt_tokens_cut: int  # tokens removed from the left of each prompt copy
    reference_tokens_cut: int  # tokens removed from the right of the reference
    response_tokens_cut: int  # tokens removed from the right of the candidate response


def encode_reference_sequence(
    tokenizer,
    prompt,
    reference,
    response,
    max_length: int,
    reward_token_id: int | None,
    max_response_length: int,
    wrapper: str = "sft",
) -> EncodedReferenceSequence:
    """THE rule for reference-conditioned (POLAR) reward models: token ids of one candidate judged against a reference.

    Layout, with no chat template (message contents are joined with newlines)::

        [BOS] prompt SEP reference <|reward|> prompt SEP response <reward token>

    SEP is a newline for `wrapper="sft"` and nothing for `"pretrain"` (and nothing next to an empty
    part); BOS is there when the tokenizer adds one to text. Each part is tokenised on its own
    without special tokens. The reference and the response keep their first `max_response_length`
    tokens; the prompt, written twice, then gets half of what is left of `max_length` per copy, cut
    from the left (its end, next to the answers, stays). If the reference and response alone do
    not fit, each keeps its first half of the room left. `max_length` counts every token.
    """
    if wrapper not in REFERENCE_WRAPPERS:
        raise ConfigError(f"wrapper must be one of {', '.join(REFERENCE_WRAPPERS)}, got {wrapper!r}")
    reward_token_id = reward_token_or_none(reward_token_id)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) if text else []

    prompt_ids, reference_ids, response_ids = (encode(_joined_text(part)) for part in (prompt, reference, response))
    separator = encode("\n") if wrapper == "sft" else []
    middle = encode(REFERENCE_SEPARATOR)
    with_specials = tokenizer("a", add_special_tokens=True, verbose=False)["input_ids"]
    bos = (
        [tokenizer.bos_token_id]
        if tokenizer.bos_token_id is not None and with_specials[:1] == [tokenizer.bos_token_id]
        else []
    )
    reward = [reward_token_id] if reward_token_id is not None else []

    reference_cut = max(0, len(reference_ids) - max_response_length)
    response_cut = max(0, len(response_ids) - max_response_length)
    reference_ids, response_ids = reference_ids[:max_response_length], response_ids[:max_response_length]
    fixed = len(bos) + 2 * len(separator) + len(middle) + len(reward)
    room = max_length - fixed
    if room < 2:
        raise ConfigError(f"max_length={max_length} is too small for a reference sequence ({fixed} fixed tokens)")
    if len(reference_ids) + len(response_ids) > room:
        keep_reference = min(len(reference_ids), max(room // 2, room - len(response_ids)))
        keep_response = room - keep_reference
        reference_cut += len(reference_ids) - keep_reference
        response_cut += len(response_ids) - keep_response
        reference_ids, response_ids = reference_ids[:keep_reference], response_ids[:keep_response]
    prompt_room = (room - len(reference_ids) - len(response_ids)) // 2
    prompt_cut = max(0, len(prompt_ids) - prompt_room)
    prompt_ids = prompt_ids[prompt_cut:]

    def joined(left: list[int], right: list[int]) -> list[int]:
        return left + (separator if left and right else []) + right

    ids = bos + joined(prompt_ids, reference_ids) + middle + joined(prompt_ids, response_ids)
    return EncodedReferenceSequence(
        _end_with_reward_token(ids, reward_token_id), prompt_cut, reference_cut, response_cut
    )


def encode_text(tokenizer, text: str, reward_token_id: int | None) -> list[int]:
    """Token ids of a chat already rendered with the chat template (what PPO trainers send a reward server).

    Tokenised without adding special tokens (the template wrote them); the reward token rule applies
    as in `encode_conversation`. Nothing is cut: the text has no prompt/response boundary to cut at.
    """
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return _end_with_reward_token(ids, reward_token_or_none(reward_token_id))


def pad_sequences(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into `input_ids` [rows, longest] and `attention_mask` [rows, longest]."""
    longest = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def score_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of each row: [rows, seq] -> [rows].

    Works for right and left padding alike: the first position where the running count of
    attended tokens reaches its final value is the last attended one.
    """
    return attention_mask.long().cumsum(dim=-1).argmax(dim=-1)


# What one more batched attention call costs, in query-key pairs (the unit of `attention_buckets`' cost).
# 256² was the fastest of 128²..1024² on HH-RLHF and UltraFeedback rows of 8 pairs, on one CPU thread
# (tools/bench_packed_attention.py); cheaper calls split the rows into more, smaller buckets.
BUCKET_CALL_COST = 256 * 256


def attention_buckets(lengths: list[int], call_cost: int = BUCKET_CALL_COST) -> list[list[int]]:
    """Sequence indices grouped into buckets of similar length, for one batched causal SDPA per bucket.

    A bucket is padded on the right to its longest sequence, so it costs `len(bucket) * longest²` query-key
    pairs plus `call_cost` for the call itself; the grouping of the length-sorted sequences with the
    least total cost is found exactly (dynamic programming over at most a few hundred sequences).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest grouping of the j longest sequences
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last bucket is order[i:j]; its longest is order[i]
            cost = best[i] + call_cost + (j - i) * lengths[order[i]] ** 2
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], n
    while j > 0:
        buckets.append(order[cut[j] : j])
        j = cut[j]
    return buckets[::-1]


def bucket_indices(lengths: list[int], call_cost: int = BUCKET_CALL_COST) -> dict:
    """Gather and scatter indices that take a packed row's tokens to right-padded buckets and back.

    `gather[b]` [len(bucket) * longest] (long): for each slot of bucket b, laid out sequence by sequence,
    the row position of its token; pad slots repeat the bucket's first token (they sit after every real
    token of their sequence, so causal attention never reads them for a real query). `width[b]`: the
    bucket's padded length. `restore` [total]: where each row token's output lies in the buckets'
    real outputs, concatenated in bucket order.
    """
    starts = [0]
    for length in lengths:
        starts.append(starts[-1] + length)
    gather, widths, real_slots = [], [], []
    offset = 0
    restore = torch.empty(starts[-1], dtype=torch.long)
    for bucket in attention_buckets(lengths, call_cost):
        width = lengths[bucket[0]]
        index = torch.full((len(bucket), width), starts[bucket[0]], dtype=torch.long)
        slots = []
        for k, seq in enumerate(bucket):
            n = lengths[seq]
            index[k, :n] = torch.arange(starts[seq], starts[seq] + n)
            slots.append(torch.arange(k * width, k * width + n))
            restore[starts[seq] : starts[seq] + n] = torch.arange(offset, offset + n)
            offset += n
        gather.append(index.view(-1))
        widths.append(width)
        real_slots.append(torch.cat(slots))
    return {"gather": gather, "real_slots": real_slots, "restore": restore, "widths": tuple(widths)}


def pack_sequences(sequences: list[list[int]]) -> dict:
    """Concatenate id lists into one padding-free row.

    Returns `input_ids` and `position_ids` [1, total] (positions restart at 0 for every sequence),
    `cu_seq_lens` [n + 1] (int32 offsets of the sequence starts, then the total), `max_seq_len`, and
    `attention_buckets` (`bucket_indices`: how the SDPA path batches the sequences, made here once per
    batch on the host so that attention needs no device-to-host copy in any layer). No attention mask:
    the sequence boundaries are in the position ids and offsets.
    """
    lengths = [len(seq) for seq in sequences]
    cu_seq_lens = torch.zeros(len(sequences) + 1, dtype=torch.int32)
    cu_seq_lens[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return {
        "input_ids": torch.tensor([token for seq in sequences for token in seq], dtype=torch.long)[None],
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
        "cu_seq_lens": cu_seq_lens,
        "max_seq_len": max(lengths),
        "attention_buckets": bucket_indices(lengths),
    }


def score_token_positions(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each sequence's score is read: (row, position in the row) of its last real token, [sequences] each.

    Padded batches: the last attended token of each row. Packed rows: the last token before each
    sequence offset. Positions index the whole row, so a process that holds only part of it
    (sequence parallelism) finds which scores it holds.
    """
    if "cu_seq_lens" in batch:
        positions = batch["cu_seq_lens"][1:].long() - 1
        return torch.zeros_like(positions), positions
    positions = score_positions(batch["attention_mask"])
    return torch.arange(positions.shape[0], device=positions.device), positions


def score_sequences(trunk: torch.nn.Module, value_head: torch.nn.Module, batch: dict) -> torch.Tensor:
    """THE scoring rule: each sequence's score is the value head at its last real token.

    `batch` is either padded (`input_ids`, `attention_mask` [rows, seq] from `pad_sequences`) or
    packed (from `pack_sequences`: one row, `position_ids`, `cu_seq_lens`). Returns [sequences]
    fp32 scores in the order the sequences were given. Training, evaluation and export use it.
    """
    if "cu_seq_lens" in batch:
        cu_seq_lens = batch["cu_seq_lens"]
        # Padding-free: no mask, positions restart per sequence, and no cache (with a cache,
        # transformers ignores the restarts and sequences attend to each other). The offsets
        # reach the attention function, which then attends within each sequence only.
        hidden = trunk(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            cu_seq_lens_q=cu_seq_lens,
            cu_seq_lens_k=cu_seq_lens,
            max_length_q=batch["max_seq_len"],
            max_length_k=batch["max_seq_len"],
            **({"attention_buckets": batch["attention_buckets"]} if "attention_buckets" in batch else {}),
        ).last_hidden_state
    else:
        hidden = trunk(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
    rows, positions = score_token_positions(batch)
    last = hidden[rows.to(hidden.device), positions.to(hidden.device)]
    return value_head(last.to(value_head.weight.dtype)).squeeze(-1).float()


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of the sequences in batches of at most `batch_size`, longest first.

    Similar lengths share a batch (little padding), and a batch that does not fit in memory shows at once.
    """
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def score_batch(trunk, value_head, sequences: list[list[int]], pad_token_id: int, device) -> list[float]:
    """Scores of token id lists scored together: right-padded, the shared rule, no gradients."""
    input_ids, attention_mask = pad_sequences(sequences, pad_token_id)
    with torch.inference_mode():
        batch = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        return score_sequences(trunk, value_head, batch).tolist()


def check_reward_token(tokenizer, reward_token_id: int | None) -> None:
    """Fail before training on a reward token the tokenizer does not have, or one used as pad."""
    reward_token_id = reward_token_or_none(reward_token_id)
    if reward_token_id is None:
        return
    if reward_token_id >= len(tokenizer):
        raise ConfigError(
            f"reward_token_id={reward_token_id} is outside the tokenizer's vocabulary "
            f"(ids 0..{len(tokenizer) - 1}); pick an unused special token of this tokenizer"
        )
    if reward_token_id == tokenizer.pad_token_id:
        raise ConfigError(
            f"reward_token_id={reward_token_id} is the tokenizer's pad token; the score would be read "
            "at padding. Pick another unused token."
        )


EXPORT_PAD_TOKEN = "<|rm_pad|>"


def ensure_distinct_pad_token(tokenizer, reward_token_id: int | None) -> bool:
    """Give the tokenizer a pad token that can never be a sequence's last real token.

    Hugging Face sequence classifiers read the score at the rightmost token that is not the pad
    token, judged from input_ids. A pad that is missing, equal to EOS (often the last real token)
    or equal to the reward token would move the score; such a tokenizer gets a dedicated pad token.
    Returns True when a token was added (the caller then grows the embeddings if needed).
    """
    pad = tokenizer.pad_token_id
    clashes = {tokenizer.eos_token_id, reward_token_or_none(reward_token_id)}
    if pad is not None and pad not in clashes:
        return False
    tokenizer.add_special_tokens({"pad_token": EXPORT_PAD_TOKEN})
    return True


def portable_chat_template(template: str, reward_token: str | None) -> str:
    """`template` that also writes the reward token after the last message of a conversation to score.

    A conversation rendered without a generation prompt (how evaluators, PPO trainers and servers
    render a chat to score) then ends with the reward token, once, whatever the number of turns;
    prompts rendered for generation are unchanged. Without a reward token the template is unchanged.
    """
    if reward_token is None:
        return template
    ending = "{%- if not add_generation_prompt %}{{ " + json.dumps(reward_token) + " }}{%- endif %}"
    return template if template.endswith(ending) else template + ending


def _post_processor_without_added_tokens(post_processor):
    """The tokenizers post-processor without the parts that add tokens (BOS/EOS templates), offsets kept."""
    from tokenizers import processors

    no_tokens = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    if post_processor is None:
        return None
    if isinstance(post_processor, processors.ByteLevel):
        return post_processor
    if isinstance(post_processor, processors.Sequence):
        kept = [part for part in post_processor if isinstance(part, processors.ByteLevel)]
        return kept[0] if len(kept) == 1 else processors.Sequence(kept) if kept else no_tokens
    return no_tokens


def make_tokenizer_portable(tokenizer, template: str, reward_token_id: int | None) -> None:
    """Make an export's tokenizer produce the training ids in every standard client, in place.

    - The reward token becomes an added (never split) token if it is not one yet, and the chat
      template writes it at the end of a conversation (`portable_chat_template`).
    - No automatic special tokens: the template writes BOS where the model wants one, so a client
      that tokenises the rendered text with `add_special_tokens=True` (vLLM, SGLang, the
      text-classification pipeline) gets the same ids as one that passes False (TRL, OpenRLHF).
    Raises ConfigError when the reward token cannot be made an added token with its own id.
    """
    from tokenizers import AddedToken

    reward_token_id = reward_token_or_none(reward_token_id)
    reward_token = None
    if reward_token_id is not None:
        reward_token = tokenizer.convert_ids_to_tokens(reward_token_id)
        if reward_token_id not in tokenizer.added_tokens_decoder:
            tokenizer.add_tokens([AddedToken(reward_token, special=True, normalized=False)])
            if tokenizer.convert_tokens_to_ids(reward_token) != reward_token_id:
                raise ConfigError(
                    f"reward_token_id={reward_token_id} ({reward_token!r}) is an ordinary vocabulary piece that cannot "
                    "be made an added token with the same id; pick an unused special token of this tokenizer"
                )
    tokenizer.chat_template = portable_chat_template(template, reward_token)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizers: the post-processor adds BOS/EOS; saved in tokenizer.json
        backend.post_processor = _post_processor_without_added_tokens(backend.post_processor)
    else:  # slow tokenizers add them in code, switched by these flags
        for flag in ("add_bos_token", "add_eos_token"):
            if getattr(tokenizer, flag, False):
                setattr(tokenizer, flag, False)
