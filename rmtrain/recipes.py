"""Find, list and copy the shipped recipes (config files).

Only the standard library is imported here: `rmtrain list-cfg` and `copy-cfg` must answer fast,
without loading torch, transformers or mmengine.
"""

import difflib
import os
import shutil
from importlib import resources
from pathlib import Path

from rmtrain.errors import ConfigError


def shipped_config_dir() -> Path:
    """The folder holding the shipped recipes (top-level configs/, installed as rmtrain.configs)."""
    return Path(str(resources.files("rmtrain.configs")))


def shipped_configs() -> dict[str, Path]:
    """Map each shipped recipe's bare name to its file, e.g. 'tiny_llama_reward_full_demo' -> path."""
    found = {}
    for root, _dirs, files in os.walk(shipped_config_dir()):
        for file in files:
            stem, ext = os.path.splitext(file)
            if ext in (".py", ".json") and not file.startswith(("_", ".")):
                found[stem] = Path(root) / file
    return dict(sorted(found.items()))


def list_configs(pattern: str | None = None) -> list[str]:
    """Names of the shipped recipes, filtered by a case-insensitive substring."""
    names = list(shipped_configs())
    if pattern:
        names = [name for name in names if pattern.lower() in name.lower()]
    return names


def resolve_config(name_or_path: str) -> Path:
    """A config path as given, or the file of a shipped recipe named by its bare name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    configs = shipped_configs()
    if name_or_path in configs:
        return configs[name_or_path]
    if path.suffix == ".py" or os.sep in name_or_path:
        raise ConfigError(f"config file not found: {name_or_path}")
    close = difflib.get_close_matches(name_or_path, list(configs), n=5, cutoff=0.4)
    hint = f" Closest names: {', '.join(close)}." if close else ""
    raise ConfigError(
        f"'{name_or_path}' is neither a config file nor a shipped config name.{hint} `rmtrain list-cfg` lists them all."
    )


def copy_config(name: str, dest_dir: str) -> Path:
    """Copy a shipped recipe to DEST_DIR/<name>_copy.py and return the new path."""
    source = resolve_config(name)
    dest_dir_path = Path(dest_dir)
    dest_dir_path.mkdir(parents=True, exist_ok=True)
    dest = dest_dir_path / f"{source.stem}_copy{source.suffix}"
    shutil.copyfile(source, dest)
    return dest
