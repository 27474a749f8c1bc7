"""Shared fixtures: the offline demo tokenizer, a tiny randomly initialised Llama trunk, and the
`rmtrain_cli` runner that every test starting the command line in a fresh process uses.

Tests that train in a subprocess, start several processes, compile with torch.compile or read
../shared/data carry the `slow` marker: `python3 -m pytest -q tests -m "not slow"` is the fast tier.
"""

import os

# Tests run offline: no library may wait on a model hub (TRL's trainer otherwise retries one). Set before
# transformers, datasets or huggingface_hub are imported; subprocesses inherit it.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")

# Under pytest-xdist (`-n 2`, the README's command) every worker runs its own trainings: one torch thread
# each, in the worker and in the processes it starts, so two workers do not crowd the cores with four.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from cli_runner import run_rmtrain  # noqa: E402
from rmtrain.data.demo import build_demo_tokenizer  # noqa: E402

TINY_LLAMA_KWARGS = dict(
    vocab_size=1024,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


@pytest.fixture
def demo_tokenizer():
    """A fresh demo tokenizer (ChatML template, pad id 0, reward token id 3); trained once per process."""
    return build_demo_tokenizer()


@pytest.fixture
def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(**TINY_LLAMA_KWARGS)


@pytest.fixture
def tiny_llama(tiny_llama_config):
    """A 2-layer, 32-wide LlamaModel in fp32 and eval mode (no dropout), seeded."""
    from transformers import LlamaModel

    torch.manual_seed(0)
    return LlamaModel(tiny_llama_config).float().eval()


@pytest.fixture(scope="session")
def rmtrain_cli():
    """The command-line runner `run_rmtrain`, for tests and for module-scoped fixtures."""
    return run_rmtrain
