"""Build objects from config dicts: `dict(type=callable, **kwargs)` -> callable(**kwargs).

Like mmengine, nested config dicts reach a component unbuilt: a component that accepts either a
built object or its config (a tokenizer, a language model, a data set) calls `build` on it, so
it can also read the config itself (a data set's file names, for error messages).
"""

import importlib

from mmengine.config.lazy import LazyAttr, LazyObject


def _resolve(obj):
    if isinstance(obj, (LazyObject, LazyAttr)):
        return obj.build()
    return obj


def resolve_type(obj_type):
    """A `type=` value (a callable, a lazy import or a dotted path 'module.name') -> the callable."""
    obj_type = _resolve(obj_type)
    if isinstance(obj_type, str):
        module_name, _, attr = obj_type.rpartition(".")
        if not module_name:
            raise ValueError(f"type='{obj_type}' must be a callable or a dotted path 'module.name'")
        return getattr(importlib.import_module(module_name), attr)
    return obj_type


def is_buildable(cfg) -> bool:
    return isinstance(cfg, dict) and "type" in cfg


def build(cfg, recursive: bool = False, **overrides):
    """Build `cfg` if it is a type dict; return anything else (an already built object) unchanged.

    recursive=True builds nested type dicts first, e.g. a model config inside a model:
    `dict(type=LlamaModel, config=dict(type=LlamaConfig, hidden_size=128))`.
    """
    if not is_buildable(cfg):
        return cfg
    kwargs = {key: _resolve(value) for key, value in cfg.items() if key != "type"}
    if recursive:
        kwargs = {key: build(value, recursive=True) for key, value in kwargs.items()}
    kwargs.update(overrides)
    return resolve_type(cfg["type"])(**kwargs)
