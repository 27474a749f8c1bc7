"""Tests for the self-made demo data and tokenizer (rmtrain.data.demo)."""

import collections

import pytest
import torch

from rmtrain.data import demo
from rmtrain.data.demo import (
    DEMO_CATEGORIES,
    DEMO_PAD_TOKEN_ID,
    DEMO_REWARD_TOKEN_ID,
    DEMO_VOCAB_SIZE,
    build_demo_preference_data,
    build_demo_tokenizer,
)
from rmtrain.errors import ConfigError


@pytest.fixture(scope="module")
def data():
    return build_demo_preference_data(num_pairs=2000, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


# --- data ------------------------------------------------------------------------------------


def test_columns_and_length(data):
    assert len(data) == 2000
    assert set(data.column_names) == {"prompt", "chosen", "rejected", "category"}


def test_same_seed_same_data():
    a = build_demo_preference_data(num_pairs=300, seed=7)
    b = build_demo_preference_data(num_pairs=300, seed=7)
    assert a.to_list() == b.to_list()


def test_different_seed_different_data():
    a = build_demo_preference_data(num_pairs=300, seed=7)
    b = build_demo_preference_data(num_pairs=300, seed=8)
    assert a.to_list() != b.to_list()


def test_does_not_touch_global_random_state():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    build_demo_preference_data(num_pairs=50, seed=1)
    assert random.random() == expected


def test_categories_present_in_equal_shares(data):
    counts = collections.Counter(data["category"])
    assert set(counts) == set(DEMO_CATEGORIES)
    share = len(data) / len(DEMO_CATEGORIES)
    for category in DEMO_CATEGORIES:
        assert abs(counts[category] - share) <= 1, counts


def test_chosen_differs_from_rejected(data):
    for chosen, rejected in zip(data["chosen"], data["rejected"]):
        assert chosen[0]["content"] != rejected[0]["content"]


def test_roles_well_formed(data):
    for row in data:
        roles = [m["role"] for m in row["prompt"]]
        assert roles in (["user"], ["system", "user"])
        for key in ("chosen", "rejected"):
            assert len(row[key]) == 1
            assert row[key][0]["role"] == "assistant"
        for message in row["prompt"] + row["chosen"] + row["rejected"]:
            assert set(message) == {"role", "content"}
            assert isinstance(message["content"], str) and message["content"].strip()


def test_some_prompts_have_a_system_message(data):
    with_system = sum(len(p) == 2 for p in data["prompt"])
    assert 0.1 * len(data) < with_system < 0.5 * len(data)


def test_preferences_are_correct_where_checkable(data):
    for row in data:
        chosen = row["chosen"][0]["content"]
        rejected = row["rejected"][0]["content"]
        if row["category"] == "uppercase":
            assert chosen.isupper()
            word = row["prompt"][-1]["content"].split("'")[1]
            assert chosen == word.upper()
        elif row["category"] == "arithmetic":
            lhs, result = chosen.split(" = ")
            assert eval(lhs) == int(result)  # noqa: S307 - digits and one operator only
            lhs_r, wrong = rejected.split(" = ")
            assert lhs_r == lhs and 0 < abs(int(wrong) - int(result)) <= 3
        elif row["category"] == "one_word":
            assert len(chosen.split()) == 1 and len(rejected.split()) > 5


def test_bad_num_pairs():
    with pytest.raises(ConfigError):
        build_demo_preference_data(num_pairs=0)


# --- tokenizer -------------------------------------------------------------------------------


def test_special_token_ids(tokenizer):
    expected = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|reward|>", "<|endoftext|>"]
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == expected
    assert tokenizer.pad_token_id == DEMO_PAD_TOKEN_ID == 0
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token is None
    assert tokenizer.padding_side == "right"


def test_reward_token_is_single_id(tokenizer):
    assert tokenizer.encode("<|reward|>", add_special_tokens=False) == [DEMO_REWARD_TOKEN_ID]
    ids = tokenizer.encode("RIVER<|reward|>", add_special_tokens=False)
    assert ids[-1] == DEMO_REWARD_TOKEN_ID and ids.count(DEMO_REWARD_TOKEN_ID) == 1


def test_vocab_fits_embedding(tokenizer):
    assert len(tokenizer) <= DEMO_VOCAB_SIZE
    assert max(tokenizer.get_vocab().values()) < DEMO_VOCAB_SIZE


def test_chat_template_format(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n2 + 3 = 5<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_round_trip(tokenizer, data):
    texts = [
        tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False)
        for row in data.select(range(200))
        for key in ("chosen", "rejected")
    ]
    texts.append("Unseen text: Ünïcödé ✓ 123\ttabs  and  spaces\n")
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text


def test_chat_markers_are_single_ids(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(2) == 1
    assert tokenizer.encode(text) == ids  # no BOS or other token is added


def test_vocab_is_deterministic():
    first = build_demo_tokenizer().get_vocab()
    saved = dict(demo._TOKENIZER_CACHE)
    demo._TOKENIZER_CACHE.clear()
    try:
        second = build_demo_tokenizer().get_vocab()
    finally:
        demo._TOKENIZER_CACHE.clear()
        demo._TOKENIZER_CACHE.update(saved)
    assert first == second


def test_byte_level_bpe_on_other_texts_keeps_the_special_ids_and_round_trips():
    tokenizer = demo.chat_tokenizer(
        demo.train_byte_level_bpe(["héllo wörld, ünïcode 🙂"] * 50 + ["plain text"] * 50, 400)
    )
    assert tokenizer.convert_tokens_to_ids("<|reward|>") == DEMO_REWARD_TOKEN_ID
    assert tokenizer.pad_token_id == DEMO_PAD_TOKEN_ID
    text = "never seen: Ωμέγα ✓"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_cached_copies_are_independent():
    a = build_demo_tokenizer()
    a.add_tokens(["<|extra|>"])
    a.chat_template = "changed"
    b = build_demo_tokenizer()
    assert "<|extra|>" not in b.get_vocab()
    assert b.chat_template == demo.DEMO_CHAT_TEMPLATE


def test_bad_vocab_size():
    with pytest.raises(ConfigError):
        build_demo_tokenizer(vocab_size=100)


# --- learnability ----------------------------------------------------------------------------


def _count_matrix(tokenizer, conversations):
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    counts = torch.zeros(len(rows), len(tokenizer))
    for i, ids in enumerate(rows):
        counts[i].index_add_(0, torch.tensor(ids), torch.ones(len(ids)))
    return counts


def test_bag_of_tokens_scorer_learns_preferences(tokenizer):
    """Preferences must be visible in tokens at all: a linear bag-of-tokens scorer learns them."""
    data = build_demo_preference_data(num_pairs=2000, seed=3)
    chosen = _count_matrix(tokenizer, [r["prompt"] + r["chosen"] for r in data])
    rejected = _count_matrix(tokenizer, [r["prompt"] + r["rejected"] for r in data])
    diff = chosen - rejected  # score(chosen) - score(rejected) = w . diff
    train, test = slice(0, 1500), slice(1500, None)

    weights = torch.zeros(diff.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        margins = diff[train] @ weights
        loss = -torch.nn.functional.logsigmoid(margins).mean() + 1e-3 * weights.pow(2).sum()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        correct = (diff[test] @ weights) > 0
    accuracy = correct.float().mean().item()
    categories = data["category"][1500:]
    per_category = {
        c: round(sum(ok for ok, cat in zip(correct.tolist(), categories) if cat == c) / categories.count(c), 3)
        for c in DEMO_CATEGORIES
    }
    print(f"bag-of-tokens held-out accuracy {accuracy:.3f}, per category {per_category}")
    assert accuracy > 0.8, per_category
