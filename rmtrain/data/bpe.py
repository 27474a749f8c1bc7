"""Chat tokenizers trained in code: a byte-level BPE with ChatML special tokens and template.

Nothing can be downloaded on an offline machine, so the demo data set and the benchmarks train
their tokenizer here on their own texts. Byte level: every string is encodable and decodes back
exactly, so no unknown token is needed.
"""

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rmtrain.scoring import NAMED_CHAT_TEMPLATES

# Order fixes the ids: the trainer assigns special tokens ids 0.. in list order.
CHAT_SPECIAL_TOKENS: tuple[str, ...] = ("<|pad|>", "<|im_start|>", "<|im_end|>", "<|reward|>", "<|endoftext|>")
CHAT_PAD_TOKEN_ID = 0
CHAT_REWARD_TOKEN_ID = 3
CHATML_TEMPLATE = NAMED_CHAT_TEMPLATES["chatml"]


def train_byte_level_bpe(texts, vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained on `texts`, with CHAT_SPECIAL_TOKENS at ids 0, 1, 2, ..."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for token_id, token in enumerate(CHAT_SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == token_id, (token, tokenizer.token_to_id(token))
    return tokenizer


def chat_tokenizer(tokenizer: Tokenizer, model_max_length: int = 2048) -> transformers.PreTrainedTokenizerFast:
    """A transformers tokenizer around a `train_byte_level_bpe` result: pad, eos, reward token, ChatML template."""
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|reward|>", "<|endoftext|>"],
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
