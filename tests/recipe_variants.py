"""Test helper: a shipped recipe with some of its PART 1 settings replaced, written to a folder."""

import re
from pathlib import Path

from rmtrain.recipes import resolve_config


def recipe_variant(
    folder: Path, name: str, recipe: str = "tiny_llama_reward_full_demo", extra: str = "", replacements=(), **settings
) -> Path:
    """Write `<folder>/<name>.py`: `recipe` with `key = value` lines replaced, text swapped, `extra` appended."""
    text = resolve_config(recipe).read_text()
    for key, value in settings.items():
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", text, count=1, flags=re.M)
        assert count == 1, f"{recipe} has no setting '{key}'"
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = Path(folder) / f"{name}.py"
    path.write_text(text + extra)
    return path
