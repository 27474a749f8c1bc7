"""Tokenizers shaped like real model families' (special tokens, BOS handling, classes, templates), offline.

Each is built from the demo vocabulary, so tiny models can train on it, and copies what matters for
scoring from the family's published tokenizer:

- Llama-3: `<|begin_of_text|>` as BOS, which both the chat template and the post-processor add (so
  `add_special_tokens=True` on template text gives two), `<|eot_id|>` as EOS, no pad token, and the
  reward token `<|reserved_special_token_0|>` (the shipped Llama-3 recipe's id 128002).
- Qwen2: the `Qwen2Tokenizer` class that AutoTokenizer picks for Qwen2 folders, no BOS, ChatML.
- SmolLM2: BOS `<|im_start|>` that the tokenizer never adds, pad = EOS = `<|im_end|>`, and SmolLM2's
  template with its default system prompt.

The ids past the demo vocabulary (1024..) need models with `vocab_size=LLAMA3_STYLE_VOCAB_SIZE`.
"""

import json

from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

from rmtrain.data import build_demo_tokenizer
from rmtrain.scoring import NAMED_CHAT_TEMPLATES

LLAMA3_STYLE_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|reserved_special_token_0|>",
)
LLAMA3_STYLE_REWARD_TOKEN_ID = 1028  # '<|reserved_special_token_0|>'
LLAMA3_STYLE_VOCAB_SIZE = 1040  # the demo vocabulary, the tokens above and room for an export's pad token

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def llama3_style_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer.from_str(build_demo_tokenizer().backend_tokenizer.to_str())
    raw.add_special_tokens(list(LLAMA3_STYLE_SPECIAL_TOKENS))
    bos_id = raw.token_to_id("<|begin_of_text|>")
    assert raw.token_to_id("<|reserved_special_token_0|>") == LLAMA3_STYLE_REWARD_TOKEN_ID
    raw.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A:0",
                pair="<|begin_of_text|> $A:0 <|begin_of_text|> $B:1",
                special_tokens=[("<|begin_of_text|>", bos_id)],
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", clean_up_tokenization_spaces=False
    )
    tokenizer.chat_template = NAMED_CHAT_TEMPLATES["llama3"]
    return tokenizer


def qwen2_style_tokenizer() -> Qwen2Tokenizer:
    demo = build_demo_tokenizer()
    bpe = json.loads(demo.backend_tokenizer.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"], merges=[tuple(pair) for pair in bpe["merges"]], unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|reward|>", "<|pad|>"],
    )  # fmt: skip
    tokenizer.chat_template = NAMED_CHAT_TEMPLATES["chatml"]
    return tokenizer


def smollm2_style_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer.from_str(build_demo_tokenizer().backend_tokenizer.to_str())
    raw.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", additional_special_tokens=["<|reward|>"], clean_up_tokenization_spaces=False,
    )  # fmt: skip
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    return tokenizer
