"""tools/gpu_throughput.py, the parts a CPU can check: its arguments, the model's shape and FLOP count."""

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from tools.gpu_throughput import INTERNLM2_1_8B, parse_args, peak_tflops, step_flops, trunk_parameters


def test_parameter_count_is_the_built_models():
    with torch.device("meta"):
        trunk = LlamaModel(LlamaConfig(**INTERNLM2_1_8B))
    built = sum(p.numel() for p in trunk.parameters()) + INTERNLM2_1_8B["hidden_size"]  # + the value head
    assert trunk_parameters(INTERNLM2_1_8B) == built
    assert 1.6e9 < built < 1.8e9  # InternLM2-1.8B without its 0.19B output head


def test_flops_count_matmuls_per_token_and_attention_per_length_squared():
    n = trunk_parameters(INTERNLM2_1_8B)
    one = step_flops(n, INTERNLM2_1_8B, [1000])
    two_short = step_flops(n, INTERNLM2_1_8B, [500, 500])
    assert one > two_short > 6 * n * 1000  # same tokens; attention is cheaper split in two
    assert one - 6 * n * 1000 == pytest.approx(2 * (two_short - 6 * n * 1000))


def test_arguments_are_checked():
    assert parse_args([]).arms == ["packed_flash", "packed_sdpa", "trl"]
    with pytest.raises(SystemExit):
        parse_args(["--arms", "packed_flash,bogus"])
    with pytest.raises(SystemExit):
        parse_args(["--row-tokens", "4096", "--max-length", "4096"])  # a row must hold a whole pair
    assert peak_tflops("NVIDIA H200", None) == 989.0 and peak_tflops("Some GPU", None) is None
    assert peak_tflops("NVIDIA H200", 500.0) == 500.0
