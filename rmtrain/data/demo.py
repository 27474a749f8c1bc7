"""Self-made preference data and tokenizer for the offline CPU demo.

The demo must run without a model hub or internet, so both the data and the tokenizer are
generated here in code. Every preference is decidable from surface tokens of the answer (or,
for arithmetic, from a small memorisable fact table), so a tiny randomly initialised model
can learn it in about a minute.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import datasets
import transformers
from tokenizers import Tokenizer

from rmtrain.data.bpe import (
    CHAT_PAD_TOKEN_ID,
    CHAT_REWARD_TOKEN_ID,
    CHAT_SPECIAL_TOKENS,
    CHATML_TEMPLATE,
    chat_tokenizer,
    train_byte_level_bpe,
)
from rmtrain.errors import ConfigError

__all__ = [
    "DEMO_CATEGORIES",
    "DEMO_CHAT_TEMPLATE",
    "DEMO_PAD_TOKEN_ID",
    "DEMO_REWARD_TOKEN_ID",
    "DEMO_SPECIAL_TOKENS",
    "DEMO_VOCAB_SIZE",
    "build_demo_preference_data",
    "build_demo_tokenizer",
]

DEMO_CATEGORIES: tuple[str, ...] = ("uppercase", "arithmetic", "one_word", "format", "politeness")

# The tokenizer's special tokens and template (rmtrain.data.bpe): ids 0 pad, 1 <|im_start|>, 2 <|im_end|>, 3 reward.
DEMO_SPECIAL_TOKENS = CHAT_SPECIAL_TOKENS
DEMO_PAD_TOKEN_ID = CHAT_PAD_TOKEN_ID
DEMO_REWARD_TOKEN_ID = CHAT_REWARD_TOKEN_ID
DEMO_VOCAB_SIZE = 1024
DEMO_CHAT_TEMPLATE = CHATML_TEMPLATE

# Seed and size of the corpus the tokenizer is trained on; fixed so the vocab never changes.
_TOKENIZER_CORPUS_PAIRS = 4000
_TOKENIZER_CORPUS_SEED = 12345
_ROLES = ("system", "user", "assistant")

# ---------------------------------------------------------------------------------------------
# Word lists (small and fixed, so a tiny model sees every word many times).

_WORDS = (
    "river",
    "stone",
    "apple",
    "cloud",
    "garden",
    "window",
    "forest",
    "candle",
    "bridge",
    "tiger",
    "mountain",
    "pencil",
    "ocean",
    "rabbit",
    "castle",
    "letter",
    "silver",
    "winter",
    "summer",
    "island",
    "honey",
    "marble",
    "rocket",
    "violin",
)

# kind (plural, for prose) -> members
_KINDS: dict[str, tuple[str, ...]] = {
    "colours": ("red", "blue", "green", "yellow", "purple", "orange", "black", "white"),
    "animals": ("cat", "dog", "horse", "rabbit", "tiger", "mouse", "sheep", "eagle"),
    "fruits": ("apple", "pear", "plum", "cherry", "banana", "mango", "lemon", "grape"),
    "seasons": ("spring", "summer", "autumn", "winter"),
    "days": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "metals": ("iron", "gold", "silver", "copper", "tin", "zinc"),
}
# kind -> the one-word question about it
_ONE_WORD_QUESTIONS = {
    "colours": "name a colour",
    "animals": "name an animal",
    "fruits": "name a fruit",
    "seasons": "name a season",
    "days": "name a day of the week",
    "metals": "name a metal",
}

_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise and accurate assistant.",
    "Follow the user's instructions exactly.",
)
_SYSTEM_PROBABILITY = 0.25

_TASKS = (
    "plan a picnic",
    "fix a bike",
    "write a birthday card",
    "learn to cook rice",
    "water the plants",
    "pack for a trip",
    "clean a desk",
    "choose a book",
    "train a puppy",
    "start running",
    "bake bread",
    "paint a fence",
)


def _pick_distinct(rng: random.Random, pool: tuple[str, ...], k: int) -> list[str]:
    return rng.sample(list(pool), k)


# ---------------------------------------------------------------------------------------------
# One generator per task family: rng -> (user prompt, chosen answer, rejected answer).


def _gen_uppercase(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(_WORDS)
    prompt = rng.choice(
        (
            "Write the word '{w}' in capital letters.",
            "Spell '{w}' using only uppercase letters.",
            "Convert '{w}' to upper case.",
        )
    ).format(w=word)
    chosen = word.upper()
    roll = rng.random()
    if roll < 0.6:
        rejected = word
    elif roll < 0.8:
        rejected = word.capitalize()
    else:  # right case, wrong word: needs the prompt to judge
        rejected = rng.choice([w for w in _WORDS if w != word]).upper()
    return prompt, chosen, rejected


def _gen_arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    op = rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a  # keep results non-negative
    result = a + b if op == "+" else a - b
    wrong = result + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if result + d >= 0])
    prompt = rng.choice(("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}.")).format(
        a=a, op=op, b=b
    )
    return prompt, f"{a} {op} {b} = {result}", f"{a} {op} {b} = {wrong}"


def _gen_one_word(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(list(_ONE_WORD_QUESTIONS))
    prompt = rng.choice(("Answer in one word: {q}.", "In a single word, {q}.", "One word only: {q}.")).format(
        q=_ONE_WORD_QUESTIONS[kind]
    )
    first, second = _pick_distinct(rng, _KINDS[kind], 2)
    chosen = first.capitalize() if rng.random() < 0.5 else first
    rejected = rng.choice(
        (
            "Well, there are many {k} to choose from, and I think {a} is a good one, "
            "but {b} is also nice, so it is really hard to say.",
            "That is a great question! Let me think about all the {k} I know. "
            "Maybe {a}, or perhaps {b}, it depends on how you look at it.",
            "I could name lots of {k}, for example {a}, but honestly {b} comes to mind "
            "first and I am not sure which one you would like best.",
        )
    ).format(k=kind, a=first, b=second)
    return prompt, chosen, rejected


def _gen_format(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(list(_KINDS))
    style = rng.choice(("commas", "lines", "numbered"))
    if style == "commas":
        items = _pick_distinct(rng, _KINDS[kind], 3)
        prompt = f"Reply with a list of three {kind} separated by commas."
        chosen = ", ".join(items)
        wrong_style = "\n".join(items)
    elif style == "lines":
        items = _pick_distinct(rng, _KINDS[kind], 2)
        prompt = f"List two {kind}, one per line."
        chosen = "\n".join(items)
        wrong_style = ", ".join(items)
    else:
        items = _pick_distinct(rng, _KINDS[kind], 3)
        prompt = f"Give three {kind} as a numbered list."
        chosen = "\n".join(f"{i}. {item}" for i, item in enumerate(items, start=1))
        wrong_style = ", ".join(items)
    if rng.random() < 0.25:  # a list, but in the wrong format: needs the prompt to judge
        rejected = wrong_style
    else:  # prose that ignores the format altogether
        rejected = rng.choice(
            (
                "Some {k} I like are {a} and {b}.",
                "There are lots of {k}, for example {a}.",
                "I would say {a} and maybe {b} too.",
            )
        ).format(k=kind, a=items[0], b=items[1])
    return prompt, chosen, rejected


def _gen_politeness(rng: random.Random) -> tuple[str, str, str]:
    task = rng.choice(_TASKS)
    prompt = rng.choice(("Can you help me {t}?", "Please help me {t}.", "I need help to {t}.")).format(t=task)
    chosen = rng.choice(
        (
            "Of course! I would be happy to help you {t}. Let us start with the first step.",
            "Sure, glad to help you {t}. Here is a simple plan to get started.",
            "Certainly! Thank you for asking. We can {t} together, one step at a time.",
        )
    ).format(t=task)
    rejected = rng.choice(
        (
            "No. Figure it out yourself.",
            "That is a boring request. Why should I care if you {t}?",
            "Ugh, {t} on your own. Stop asking me.",
        )
    ).format(t=task)
    return prompt, chosen, rejected


_GENERATORS: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "uppercase": _gen_uppercase,
    "arithmetic": _gen_arithmetic,
    "one_word": _gen_one_word,
    "format": _gen_format,
    "politeness": _gen_politeness,
}
assert tuple(_GENERATORS) == DEMO_CATEGORIES


def _generate_records(num_pairs: int, seed: int) -> list[dict[str, Any]]:
    """Plain-Python records; shared by the data set and the tokenizer corpus."""
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int) or num_pairs < 1:
        raise ConfigError(f"num_pairs must be a positive int, got {num_pairs!r}")
    rng = random.Random(seed)
    # Round-robin then shuffle: exactly equal shares (up to one) in a random order.
    categories = [DEMO_CATEGORIES[i % len(DEMO_CATEGORIES)] for i in range(num_pairs)]
    rng.shuffle(categories)
    records = []
    for category in categories:
        user, chosen, rejected = _GENERATORS[category](rng)
        assert chosen != rejected, (category, chosen)
        prompt = []
        if rng.random() < _SYSTEM_PROBABILITY:
            prompt.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        prompt.append({"role": "user", "content": user})
        records.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "category": category,
            }
        )
    return records


def build_demo_preference_data(num_pairs: int = 2000, seed: int = 0) -> datasets.Dataset:
    """A deterministic preference set whose preferences a tiny model can learn.

    Columns `prompt`, `chosen`, `rejected` (lists of role/content messages) and `category`
    (one of DEMO_CATEGORIES, in equal shares).
    """
    return datasets.Dataset.from_list(_generate_records(num_pairs, seed))


# ---------------------------------------------------------------------------------------------
# Tokenizer

# vocab_size -> serialised trained tokenizer; JSON so every caller gets an independent copy.
_TOKENIZER_CACHE: dict[int, str] = {}


def _tokenizer_corpus() -> list[str]:
    """Texts the BPE learns from: every message plus the chat scaffolding around it.

    Special-token strings are left out: they are matched whole, never split into merges.
    """
    texts = [f"{role}\n" for role in _ROLES]
    for record in _generate_records(_TOKENIZER_CORPUS_PAIRS, _TOKENIZER_CORPUS_SEED):
        for key in ("prompt", "chosen", "rejected"):
            for message in record[key]:
                texts.append(f"{message['role']}\n{message['content']}\n")
    return texts


def build_demo_tokenizer(vocab_size: int = DEMO_VOCAB_SIZE) -> transformers.PreTrainedTokenizerFast:
    """A small byte-level BPE with a ChatML template, trained in code on the demo data.

    Trained once per vocab_size and process; each call returns a fresh, independent object.
    """
    min_size = len(DEMO_SPECIAL_TOKENS) + 256
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < min_size:
        raise ConfigError(f"vocab_size must be an int >= {min_size}, got {vocab_size!r}")
    if vocab_size not in _TOKENIZER_CACHE:
        _TOKENIZER_CACHE[vocab_size] = train_byte_level_bpe(_tokenizer_corpus(), vocab_size).to_str()
    return chat_tokenizer(Tokenizer.from_str(_TOKENIZER_CACHE[vocab_size]))
