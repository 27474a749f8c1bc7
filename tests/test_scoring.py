"""Tests for rmtrain.scoring: template resolution, encoding/truncation, padding, score positions."""

import pytest
import torch

from rmtrain.data.demo import DEMO_CHAT_TEMPLATE, build_demo_tokenizer
from rmtrain.errors import ConfigError
from rmtrain.scoring import (
    NAMED_CHAT_TEMPLATES,
    check_reward_token,
    encode_conversation,
    encode_text,
    length_sorted_batches,
    make_tokenizer_portable,
    pad_sequences,
    portable_chat_template,
    render_chat,
    resolve_chat_template,
    score_positions,
)
from style_tokenizers import (
    LLAMA3_STYLE_REWARD_TOKEN_ID,
    llama3_style_tokenizer,
    qwen2_style_tokenizer,
    smollm2_style_tokenizer,
)

REWARD = 3
LONG_PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write the word river in capital letters please. " * 6 + "THE PROMPT END"},
]
SHORT_RESPONSE = [{"role": "assistant", "content": "RIVER"}]
LONG_RESPONSE = [{"role": "assistant", "content": "one two three four five six seven eight nine ten " * 5}]


def _full_ids(tok, prompt, response, template=DEMO_CHAT_TEMPLATE):
    text = render_chat(tok, [*prompt, *response], template)
    return tok(text, add_special_tokens=False)["input_ids"]


def _prompt_len(tok, prompt, template=DEMO_CHAT_TEMPLATE):
    text = render_chat(tok, prompt, template, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


# --- encode_conversation -----------------------------------------------------------------------


def test_reward_token_appended_once(demo_tokenizer):
    full = _full_ids(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE)
    enc = encode_conversation(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE, 1000, REWARD, DEMO_CHAT_TEMPLATE)
    assert enc.input_ids == full + [REWARD]
    assert enc.input_ids.count(REWARD) == 1
    assert enc.prompt_tokens_cut == 0 and enc.response_tokens_cut == 0


def test_reward_token_not_duplicated_when_already_last(demo_tokenizer):
    # A template that ends a full chat (not a generation prompt) with the reward token itself.
    template = DEMO_CHAT_TEMPLATE + "{% if not add_generation_prompt %}<|reward|>{% endif %}"
    full = _full_ids(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE, template)
    assert full[-1] == REWARD
    enc = encode_conversation(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE, 1000, REWARD, template)
    assert enc.input_ids == full
    assert enc.input_ids.count(REWARD) == 1


@pytest.mark.parametrize("reward_token_id", [None, -1])
def test_no_reward_token(demo_tokenizer, reward_token_id):
    full = _full_ids(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE)
    enc = encode_conversation(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE, 1000, reward_token_id, DEMO_CHAT_TEMPLATE)
    assert enc.input_ids == full
    assert REWARD not in enc.input_ids


@pytest.mark.parametrize("reward_token_id", [None, -1])
def test_no_reward_token_uses_whole_budget(demo_tokenizer, reward_token_id):
    full = _full_ids(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE)
    enc = encode_conversation(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE, 20, reward_token_id, DEMO_CHAT_TEMPLATE)
    assert len(enc.input_ids) == 20
    assert enc.input_ids == full[-20:]
    assert enc.prompt_tokens_cut == len(full) - 20


@pytest.mark.parametrize("max_length", [8, 12, 20, 33, 50, 64, 200])
@pytest.mark.parametrize("response", [SHORT_RESPONSE, LONG_RESPONSE], ids=["short", "long"])
def test_length_within_max_length(demo_tokenizer, max_length, response):
    enc = encode_conversation(demo_tokenizer, LONG_PROMPT, response, max_length, REWARD, DEMO_CHAT_TEMPLATE)
    assert len(enc.input_ids) <= max_length
    assert enc.input_ids[-1] == REWARD
    full = _full_ids(demo_tokenizer, LONG_PROMPT, response)
    # every removed token is accounted for
    assert len(full) - enc.prompt_tokens_cut - enc.response_tokens_cut + 1 == len(enc.input_ids)


def test_prompt_cut_from_left_first(demo_tokenizer):
    full = _full_ids(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE)
    max_length = 30
    assert len(full) + 1 > max_length
    enc = encode_conversation(demo_tokenizer, LONG_PROMPT, SHORT_RESPONSE, max_length, REWARD, DEMO_CHAT_TEMPLATE)
    assert len(enc.input_ids) == max_length
    assert enc.response_tokens_cut == 0
    assert enc.prompt_tokens_cut == len(full) + 1 - max_length
    # exactly the leading tokens are gone
    assert enc.input_ids == full[enc.prompt_tokens_cut :] + [REWARD]
    text = demo_tokenizer.decode(enc.input_ids)
    assert text.endswith("THE PROMPT END<|im_end|>\n<|im_start|>assistant\nRIVER<|im_end|>\n<|reward|>")
    assert "You are a helpful assistant." not in text
    assert not text.startswith("<|im_start|>system")


def test_long_response_cut_from_right(demo_tokenizer):
    full = _full_ids(demo_tokenizer, LONG_PROMPT, LONG_RESPONSE)
    num_prompt = _prompt_len(demo_tokenizer, LONG_PROMPT)
    max_length = 16
    enc = encode_conversation(demo_tokenizer, LONG_PROMPT, LONG_RESPONSE, max_length, REWARD, DEMO_CHAT_TEMPLATE)
    assert len(enc.input_ids) == max_length
    assert enc.prompt_tokens_cut == num_prompt  # the whole prompt goes first
    assert enc.response_tokens_cut > 0
    assert enc.response_tokens_cut == len(full) - num_prompt - (max_length - 1)
    # the response's first tokens survive, the tail is gone
    assert enc.input_ids == full[num_prompt : num_prompt + max_length - 1] + [REWARD]
    text = demo_tokenizer.decode(enc.input_ids)
    assert text.startswith("one two three")
    assert "<|im_end|>" not in text


def test_empty_prompt(demo_tokenizer):
    full = _full_ids(demo_tokenizer, [], SHORT_RESPONSE)
    enc = encode_conversation(demo_tokenizer, [], SHORT_RESPONSE, 100, REWARD, DEMO_CHAT_TEMPLATE)
    assert enc.input_ids == full + [REWARD]


@pytest.fixture
def bos_tokenizer():
    tok = build_demo_tokenizer()
    tok.bos_token = "<|endoftext|>"
    return tok


def test_bos_kept_when_prompt_cut(bos_tokenizer):
    template = NAMED_CHAT_TEMPLATES["internlm2"]
    bos = bos_tokenizer.bos_token_id
    assert bos == 4
    full = _full_ids(bos_tokenizer, LONG_PROMPT, SHORT_RESPONSE, template)
    assert full[0] == bos
    max_length = 25
    enc = encode_conversation(bos_tokenizer, LONG_PROMPT, SHORT_RESPONSE, max_length, REWARD, template)
    assert len(enc.input_ids) == max_length
    assert enc.input_ids[0] == bos
    assert enc.prompt_tokens_cut == len(full) + 1 - max_length
    assert enc.response_tokens_cut == 0
    assert enc.input_ids == [bos] + full[1 + enc.prompt_tokens_cut :] + [REWARD]
    text = bos_tokenizer.decode(enc.input_ids)
    assert text.startswith("<|endoftext|>")
    assert text.endswith("THE PROMPT END<|im_end|>\n<|im_start|>assistant\nRIVER<|im_end|>\n<|reward|>")


def test_bos_kept_when_response_cut(bos_tokenizer):
    template = NAMED_CHAT_TEMPLATES["internlm2"]
    bos = bos_tokenizer.bos_token_id
    enc = encode_conversation(bos_tokenizer, LONG_PROMPT, LONG_RESPONSE, 12, REWARD, template)
    assert len(enc.input_ids) == 12
    assert enc.input_ids[0] == bos
    assert enc.response_tokens_cut > 0
    assert bos_tokenizer.decode(enc.input_ids[1:]).startswith("one two")


# --- resolve_chat_template -----------------------------------------------------------------------


def test_config_template_name_wins_over_tokenizer(demo_tokenizer):
    assert demo_tokenizer.chat_template == DEMO_CHAT_TEMPLATE
    assert resolve_chat_template(demo_tokenizer, "plain") == NAMED_CHAT_TEMPLATES["plain"]
    assert resolve_chat_template(demo_tokenizer, "llama3") == NAMED_CHAT_TEMPLATES["llama3"]


def test_tokenizer_template_used_without_config(demo_tokenizer):
    assert resolve_chat_template(demo_tokenizer) == DEMO_CHAT_TEMPLATE
    assert resolve_chat_template(demo_tokenizer, None) == DEMO_CHAT_TEMPLATE


def test_jinja_passthrough(demo_tokenizer):
    jinja = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    assert resolve_chat_template(demo_tokenizer, jinja) == jinja
    demo_tokenizer.chat_template = None
    assert resolve_chat_template(demo_tokenizer, jinja) == jinja


def test_named_template_without_tokenizer_template(demo_tokenizer):
    demo_tokenizer.chat_template = None
    assert resolve_chat_template(demo_tokenizer, "chatml") == NAMED_CHAT_TEMPLATES["chatml"]


def test_no_template_raises(demo_tokenizer):
    demo_tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        resolve_chat_template(demo_tokenizer)


def test_named_chatml_matches_demo_template(demo_tokenizer):
    msgs = [*LONG_PROMPT, *SHORT_RESPONSE]
    assert render_chat(demo_tokenizer, msgs, NAMED_CHAT_TEMPLATES["chatml"]) == render_chat(
        demo_tokenizer, msgs, DEMO_CHAT_TEMPLATE
    )


# --- pad_sequences / score_positions ------------------------------------------------------------


def test_pad_sequences():
    ids, mask = pad_sequences([[5, 6, 7], [8], [9, 10]], pad_token_id=0)
    assert ids.shape == mask.shape == (3, 3)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]


def test_pad_sequences_custom_pad():
    ids, mask = pad_sequences([[1], [2, 3]], pad_token_id=99)
    assert ids.tolist() == [[1, 99], [2, 3]]
    assert mask.tolist() == [[1, 0], [1, 1]]


def test_score_positions_right_padding():
    _ids, mask = pad_sequences([[5, 6, 7], [8], [9, 10]], pad_token_id=0)
    assert score_positions(mask).tolist() == [2, 0, 1]


def test_score_positions_left_padding():
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 1, 1]])
    assert score_positions(mask).tolist() == [3, 3, 3, 3]


def test_score_positions_bool_mask():
    mask = torch.tensor([[True, True, False], [False, True, True]])
    assert score_positions(mask).tolist() == [1, 2]


# --- check_reward_token ------------------------------------------------------------------------


def test_check_reward_token_ok(demo_tokenizer):
    check_reward_token(demo_tokenizer, 3)
    check_reward_token(demo_tokenizer, None)
    check_reward_token(demo_tokenizer, -1)
    check_reward_token(demo_tokenizer, len(demo_tokenizer) - 1)


@pytest.mark.parametrize("token_id", [1024, 5000])
def test_check_reward_token_out_of_vocab(demo_tokenizer, token_id):
    with pytest.raises(ConfigError, match=f"reward_token_id={token_id}") as info:
        check_reward_token(demo_tokenizer, token_id)
    assert "vocabulary" in str(info.value)


def test_check_reward_token_is_pad(demo_tokenizer):
    assert demo_tokenizer.pad_token_id == 0
    with pytest.raises(ConfigError, match="reward_token_id=0") as info:
        check_reward_token(demo_tokenizer, 0)
    assert "pad" in str(info.value)


# --- portable exports: the template writes the reward token, the tokenizer adds no special tokens --


CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."},
    ],
    [
        {"role": "user", "content": "Write river in capitals."},
        {"role": "assistant", "content": "RIVER"},
        {"role": "user", "content": "And stone?"},
        {"role": "assistant", "content": "STONE"},
    ],
]


def test_portable_template_ends_a_scored_chat_with_the_reward_token_once(demo_tokenizer):
    template = portable_chat_template(DEMO_CHAT_TEMPLATE, "<|reward|>")
    for chat in CHATS:
        text = render_chat(demo_tokenizer, chat, template)
        assert text == render_chat(demo_tokenizer, chat, DEMO_CHAT_TEMPLATE) + "<|reward|>"
        assert text.count("<|reward|>") == 1
        # A prompt rendered for generation is unchanged: no reward token before the answer.
        prompt = render_chat(demo_tokenizer, chat[:-1], template, add_generation_prompt=True)
        assert prompt == render_chat(demo_tokenizer, chat[:-1], DEMO_CHAT_TEMPLATE, add_generation_prompt=True)
    assert portable_chat_template(template, "<|reward|>") == template  # exporting an export adds nothing
    assert portable_chat_template(DEMO_CHAT_TEMPLATE, None) == DEMO_CHAT_TEMPLATE


STYLES = {
    "llama3": (llama3_style_tokenizer, LLAMA3_STYLE_REWARD_TOKEN_ID),
    "qwen2": (qwen2_style_tokenizer, REWARD),
    "smollm2": (smollm2_style_tokenizer, REWARD),
}


@pytest.mark.parametrize("with_reward_token", [True, False], ids=["reward_token", "no_reward_token"])
@pytest.mark.parametrize("style", list(STYLES))
def test_portable_tokenizer_gives_training_ids_to_every_client(tmp_path, style, with_reward_token):
    from transformers import AutoTokenizer

    build_tokenizer, reward_token_id = STYLES[style]
    reward_token_id = reward_token_id if with_reward_token else None
    tokenizer = build_tokenizer()
    template = tokenizer.chat_template
    training_ids = [
        encode_conversation(tokenizer, c[:-1], c[-1:], 10**6, reward_token_id, template).input_ids for c in CHATS
    ]
    if style == "llama3":  # the problem being solved: BOS from the template and again from the tokenizer
        text = tokenizer.apply_chat_template(CHATS[0], tokenize=False)
        assert tokenizer(text)["input_ids"][:2] == [tokenizer.bos_token_id] * 2

    make_tokenizer_portable(tokenizer, template, reward_token_id)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [reloaded.apply_chat_template(chat, tokenize=False) for chat in CHATS]
    for add_special_tokens in (True, False):
        assert reloaded(texts, add_special_tokens=add_special_tokens)["input_ids"] == training_ids
    # rmtrain's own rule on the exported template appends nothing more.
    again = [
        encode_conversation(reloaded, c[:-1], c[-1:], 10**6, reward_token_id, reloaded.chat_template).input_ids
        for c in CHATS
    ]
    assert again == training_ids
    if with_reward_token:
        assert all(ids[-1] == reward_token_id and ids.count(reward_token_id) == 1 for ids in training_ids)


def test_an_ordinary_vocabulary_piece_as_reward_token_becomes_an_added_token(demo_tokenizer):
    piece_id = 300
    piece = demo_tokenizer.convert_ids_to_tokens(piece_id)
    assert piece_id not in demo_tokenizer.added_tokens_decoder
    make_tokenizer_portable(demo_tokenizer, DEMO_CHAT_TEMPLATE, piece_id)
    assert piece_id in demo_tokenizer.added_tokens_decoder and len(demo_tokenizer) == 1024
    text = demo_tokenizer.apply_chat_template(CHATS[0], tokenize=False)
    assert text.endswith(piece)
    assert demo_tokenizer(text)["input_ids"][-1] == piece_id


def test_encode_text_appends_the_reward_token_unless_last(demo_tokenizer):
    text = render_chat(demo_tokenizer, CHATS[0], DEMO_CHAT_TEMPLATE)
    ids = demo_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert encode_text(demo_tokenizer, text, REWARD) == ids + [REWARD]
    assert encode_text(demo_tokenizer, text + "<|reward|>", REWARD) == ids + [REWARD]
    assert encode_text(demo_tokenizer, text, None) == ids
    assert encode_text(demo_tokenizer, text, -1) == ids


def test_length_sorted_batches():
    assert length_sorted_batches([3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]
    assert length_sorted_batches([], 4) == []


# --- reference-conditioned (POLAR) sequences -----------------------------------------------------


def _tokens(tokenizer, names: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(names.split())


def test_reference_sequence_layout_token_by_token():
    from rmtrain.scoring import encode_reference_sequence

    tokenizer = build_demo_tokenizer()
    prompt = [{"role": "system", "content": "a b"}, {"role": "user", "content": "c d"}]
    encoded = encode_reference_sequence(
        tokenizer, prompt, [{"role": "assistant", "content": "x y"}], "5", 64, REWARD, max_response_length=8
    )
    # prompt (contents joined by a newline), newline, reference, <|reward|>, prompt, newline, candidate, reward token
    expected = "a Ġb Ċ c Ġd Ċ x Ġy <|reward|> a Ġb Ċ c Ġd Ċ 5 <|reward|>"
    assert encoded.input_ids == _tokens(tokenizer, expected)
    assert (encoded.prompt_tokens_cut, encoded.reference_tokens_cut, encoded.response_tokens_cut) == (0, 0, 0)


def test_reference_sequence_cuts_prompt_left_and_answers_right():
    from rmtrain.scoring import encode_reference_sequence

    tokenizer = build_demo_tokenizer()
    # 4 fixed tokens (2 newlines, <|reward|>, the reward token), reference and response keep 1 token each,
    # leaving (10 - 4 - 2) // 2 = 2 tokens for each copy of the prompt: its last two.
    encoded = encode_reference_sequence(tokenizer, "a b c d", "x y", "5 6", 10, REWARD, max_response_length=1)
    assert encoded.input_ids == _tokens(tokenizer, "Ġc Ġd Ċ x <|reward|> Ġc Ġd Ċ 5 <|reward|>")
    assert (encoded.prompt_tokens_cut, encoded.reference_tokens_cut, encoded.response_tokens_cut) == (2, 1, 1)
    assert len(encoded.input_ids) == 10


def test_reference_sequence_pretrain_wrapper_and_bos():
    from rmtrain.scoring import encode_reference_sequence

    tokenizer = build_demo_tokenizer()
    encoded = encode_reference_sequence(tokenizer, "a b", "x", "5", 64, REWARD, 8, wrapper="pretrain")
    assert encoded.input_ids == _tokens(tokenizer, "a Ġb x <|reward|> a Ġb 5 <|reward|>")
    llama = llama3_style_tokenizer()  # adds <|begin_of_text|> to text: once, at the start
    ids = encode_reference_sequence(llama, "a b", "x", "5", 64, LLAMA3_STYLE_REWARD_TOKEN_ID, 8).input_ids
    assert ids[0] == llama.bos_token_id and ids.count(llama.bos_token_id) == 1
    assert ids[-1] == LLAMA3_STYLE_REWARD_TOKEN_ID
    with pytest.raises(ConfigError, match="wrapper"):
        encode_reference_sequence(tokenizer, "a", "x", "5", 64, REWARD, 8, wrapper="chat")
