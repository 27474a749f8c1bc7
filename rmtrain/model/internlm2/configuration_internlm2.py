"""Configuration of the InternLM2 model family (model_type "internlm2").

The field names are those of the `config.json` files published with InternLM2 checkpoints, so such
a file loads into this class unchanged. This file is copied next to exported weights and must keep
importing nothing but `transformers`.
"""

from transformers import PretrainedConfig

__all__ = ["InternLM2Config"]

_ROPE_SCALING_TYPES = ("linear", "dynamic")


class InternLM2Config(PretrainedConfig):
    """Shape and behaviour of an InternLM2 decoder.

    Args:
        vocab_size: number of token embeddings (and LM-head rows).
        hidden_size: width of the residual stream.
        intermediate_size: width of the gated feed-forward layer.
        num_hidden_layers: number of decoder layers.
        num_attention_heads: query heads per layer; must divide `hidden_size`.
        num_key_value_heads: key/value heads (grouped-query attention); defaults to
            `num_attention_heads` and must divide it.
        hidden_act: activation of the feed-forward gate.
        max_position_embeddings: context length the model was trained for; dynamic RoPE scaling
            starts stretching positions beyond it.
        initializer_range: standard deviation of the normal initialisation of linears and embeddings.
        rms_norm_eps: epsilon of the RMS norms.
        use_cache: kept for compatibility with published configs (no key/value cache is implemented).
        pad_token_id, bos_token_id, eos_token_id: special token ids.
        tie_word_embeddings: share the input embedding with the LM head (InternLM2 does not).
        bias: add biases to the packed `wqkv` projection and to `wo`.
        rope_theta: base of the rotary position embedding.
        rope_scaling: None, or `{"type": "linear" | "dynamic", "factor": float > 1}`.
        attn_implementation: kept as published configs carry it; attention always runs through
            `torch.nn.functional.scaled_dot_product_attention`.
        reward_token_id: the token appended to each conversation and read by the reward head.
    """

    model_type = "internlm2"
    keys_to_ignore_at_inference = ["past_key_values"]
    # A plain class attribute: it shadows the base class's deprecated `rope_scaling` property, so
    # the value is stored as given instead of being rewritten into `rope_parameters`.
    rope_scaling = None

    def __init__(
        self,
        vocab_size=103168,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        bias=True,
        rope_theta=10000,
        rope_scaling=None,
        attn_implementation=None,
        reward_token_id=None,
        **kwargs,
    ):
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
            )
        if num_attention_heads % num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({num_key_value_heads})"
            )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.bias = bias
        self.rope_theta = rope_theta
        self.rope_scaling = _checked_rope_scaling(rope_scaling)
        self.attn_implementation = "eager" if attn_implementation is None else attn_implementation
        self.reward_token_id = reward_token_id
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


def _checked_rope_scaling(rope_scaling):
    """None, or a copy of `{"type": "linear"|"dynamic", "factor": float > 1}`; anything else raises."""
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict) or set(rope_scaling) != {"type", "factor"}:
        raise ValueError(f"rope_scaling must be None or a dict with exactly 'type' and 'factor', got {rope_scaling!r}")
    scaling_type = rope_scaling["type"]
    factor = rope_scaling["factor"]
    if scaling_type not in _ROPE_SCALING_TYPES:
        raise ValueError(f"rope_scaling['type'] must be one of {_ROPE_SCALING_TYPES}, got {scaling_type!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1.0:
        raise ValueError(f"rope_scaling['factor'] must be a number > 1, got {factor!r}")
    return {"type": scaling_type, "factor": float(factor)}
