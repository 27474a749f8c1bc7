"""Map functions: turn one raw data-set record into rmtrain's preference format.

A map function is a pure function ``fn(record: dict) -> dict``. It reads one record of a public
preference data set in that set's own shape and returns::

    {
        "prompt":   [{"role": "user", "content": "..."}, ...],  # the conversation before the responses
        "chosen":   [{"role": "assistant", "content": "..."}],  # the preferred response turn(s)
        "rejected": [{"role": "assistant", "content": "..."}],  # the dispreferred response turn(s)
        "margin":   1.0,  # only when the record has a numeric ``margin`` field
    }

Every message is a new ``{"role", "content"}`` dict; role is one of system, user, assistant, tool
and content is a string. ``prompt`` may be multi-turn and may start with a system message; it is
empty only when the data itself has no prompt. ``chosen`` and ``rejected`` end with an assistant
message whose text is not blank. Response text is passed through unchanged, except for HH-RLHF,
whose transcripts are parsed and stripped.

A record a function cannot use (a missing field, a wrong type, a blank response) raises
``RecordFieldError(field, message)`` naming the record's own field; the data set builder adds the
file and the record index. A map function never drops a record and never returns a partial one.

Configs name a map function by its registered name (the keys of ``MAP_FNS``), by a dotted path
``"package.module.function"``, or pass the callable itself; ``resolve_map_fn`` turns any of these
into the function.
"""

from __future__ import annotations

import difflib
import importlib
import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

from rmtrain.errors import ConfigError, RecordFieldError

Message = dict[str, str]
MapFn = Callable[[Mapping[str, Any]], dict[str, Any]]

ROLES = ("system", "user", "assistant", "tool")

MAP_FNS: dict[str, MapFn] = {}


def register_map_fn(name: str) -> Callable[[MapFn], MapFn]:
    """Decorator: register a map function under ``name`` in ``MAP_FNS``."""

    def decorator(fn: MapFn) -> MapFn:
        if MAP_FNS.get(name, fn) is not fn:
            raise ConfigError(f"a map function named {name!r} is already registered")
        MAP_FNS[name] = fn
        return fn

    return decorator


def resolve_map_fn(map_fn: str | MapFn | None) -> MapFn | None:
    """None -> None; a callable -> itself; a registered name or a dotted path -> the function."""
    if map_fn is None or callable(map_fn):
        return map_fn
    if isinstance(map_fn, str) and map_fn in MAP_FNS:
        return MAP_FNS[map_fn]
    if isinstance(map_fn, str) and "." in map_fn:
        module_name, _, attr = map_fn.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError, TypeError) as exc:  # the last two: names like ".fn"
            raise ConfigError(_unknown_map_fn(map_fn, f"cannot import it ({exc})")) from exc
        if not callable(fn):
            raise ConfigError(_unknown_map_fn(map_fn, f"it is a {type(fn).__name__}, not a function"))
        return fn
    raise ConfigError(_unknown_map_fn(map_fn, "it is not a registered map function name"))


def _unknown_map_fn(map_fn: object, reason: str) -> str:
    close = difflib.get_close_matches(str(map_fn), list(MAP_FNS), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"unknown map_fn {map_fn!r}: {reason}.{hint} Registered map functions: "
        f"{', '.join(sorted(MAP_FNS))}. A dotted path 'package.module.function' or a callable also works."
    )


# ----------------------------------------------------------------------------- helpers


def _msg(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _require(record: Mapping[str, Any], field: str) -> Any:
    value = record.get(field)
    if value is None:
        raise RecordFieldError(field, "missing")
    return value


def _check_text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RecordFieldError(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordFieldError(field, "is empty (or only whitespace)")
    return value


def _require_str(record: Mapping[str, Any], field: str) -> str:
    return _check_text(_require(record, field), field)


def _system_prompt(record: Mapping[str, Any]) -> list[Message]:
    """The optional ``system`` string field as a prompt prefix; missing or blank -> no message."""
    system = record.get("system")
    if system is None:
        return []
    if not isinstance(system, str):
        raise RecordFieldError("system", f"expected a string, got {type(system).__name__}")
    return [_msg("system", system)] if system.strip() else []


def _check_messages(value: Any, field: str) -> list[Message]:
    if not isinstance(value, (list, tuple)):
        got = type(value).__name__
        raise RecordFieldError(field, f"expected a list of {{role, content}} messages, got {got}")
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, Mapping):
            got = type(msg).__name__
            raise RecordFieldError(field, f"message {i} must be a {{role, content}} dict, got {got}")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise RecordFieldError(field, f"message {i}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            got = type(content).__name__
            raise RecordFieldError(field, f"message {i}: content must be a string, got {got}")
        messages.append(_msg(role, content))
    return messages


def _require_messages(record: Mapping[str, Any], field: str) -> list[Message]:
    return _check_messages(_require(record, field), field)


def _check_response(messages: list[Message], field: str) -> list[Message]:
    """Response turns must end with an assistant message with non-blank text."""
    if not messages:
        raise RecordFieldError(field, "has no messages")
    last = messages[-1]
    if last["role"] != "assistant":
        raise RecordFieldError(field, f"the last message must be an assistant message, not {last['role']!r}")
    if not last["content"].strip():
        raise RecordFieldError(field, "the response text is empty (or only whitespace)")
    return messages


def _finish(
    record: Mapping[str, Any], prompt: list[Message], chosen: list[Message], rejected: list[Message]
) -> dict[str, Any]:
    """Assemble the output and copy a numeric ``margin`` field as a float."""
    out: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    margin = record.get("margin")
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not math.isfinite(margin):
            raise RecordFieldError("margin", f"expected a finite number, got {margin!r}")
        out["margin"] = float(margin)
    return out


# ----------------------------------------------------------------------------- map functions


@register_map_fn("orpo_dpo_mix_40k_map_fn")
def orpo_dpo_mix_40k_map_fn(record: Mapping[str, Any]) -> dict[str, Any]:
    """mlabonne/orpo-dpo-mix-40k, argilla/ultrafeedback-binarized-preferences-cleaned.

    ``chosen`` and ``rejected`` are whole conversations ending with the assistant's answer; the
    prompt is ``chosen[:-1]``. Only when that is empty, a ``prompt`` string column is the user turn.
    """
    chosen = _check_response(_require_messages(record, "chosen"), "chosen")
    rejected = _check_response(_require_messages(record, "rejected"), "rejected")
    prompt = chosen[:-1]
    if not prompt and isinstance(record.get("prompt"), str) and record["prompt"].strip():
        prompt = [_msg("user", record["prompt"])]
    return _finish(record, prompt, chosen[-1:], rejected[-1:])


@register_map_fn("intel_orca_dpo_map_fn")
def intel_orca_dpo_map_fn(record: Mapping[str, Any]) -> dict[str, Any]:
    """Intel/orca_dpo_pairs: strings ``system`` (may be empty), ``question``, ``chosen``, ``rejected``."""
    prompt = _system_prompt(record) + [_msg("user", _require_str(record, "question"))]
    chosen = [_msg("assistant", _require_str(record, "chosen"))]
    rejected = [_msg("assistant", _require_str(record, "rejected"))]
    return _finish(record, prompt, chosen, rejected)


_HH_ASSISTANT = "\n\nAssistant:"
_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _hh_split(record: Mapping[str, Any], field: str) -> tuple[str, str]:
    """Split a transcript at its last assistant marker: (conversation before it, stripped response)."""
    head, marker, response = _require_str(record, field).rpartition(_HH_ASSISTANT)
    if not marker:
        raise RecordFieldError(field, "no '\\n\\nAssistant:' turn in the transcript")
    if not response.strip():
        raise RecordFieldError(field, "the response after the last '\\n\\nAssistant:' is empty")
    return head, response.strip()


@register_map_fn("hh_rlhf_map_fn")
def hh_rlhf_map_fn(record: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic/hh-rlhf: ``chosen`` and ``rejected`` are whole transcripts,
    ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <response>"``.

    The prompt is parsed from the chosen transcript; a rejected transcript whose earlier turns
    differ (a few real records) still gets the chosen prompt.
    """
    head, chosen = _hh_split(record, "chosen")
    _, rejected = _hh_split(record, "rejected")
    parts = _HH_MARKER.split("\n\n" + head.lstrip())  # ["", role, text, role, text, ...]
    if parts[0].strip() or parts[1:2] != ["Human"]:
        raise RecordFieldError("chosen", "the transcript must start with a '\\n\\nHuman:' turn")
    prompt = [_msg(_HH_ROLES[role], text.strip()) for role, text in zip(parts[1::2], parts[2::2])]
    return _finish(record, prompt, [_msg("assistant", chosen)], [_msg("assistant", rejected)])


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function_call": "assistant",
}


def _sharegpt_turn(turn: Any, field: str, where: str) -> Message:
    if not isinstance(turn, Mapping):
        raise RecordFieldError(field, f"{where} is a {type(turn).__name__}, not a {{from, value}} dict")
    speaker, value = turn.get("from"), turn.get("value")
    if not isinstance(speaker, str) or speaker not in _SHAREGPT_ROLES:
        known = ", ".join(_SHAREGPT_ROLES)
        raise RecordFieldError(field, f"{where}: 'from' {speaker!r} is not one of {known}")
    if not isinstance(value, str):
        raise RecordFieldError(field, f"{where}: 'value' must be a string, got {type(value).__name__}")
    return _msg(_SHAREGPT_ROLES[speaker], value)


def _sharegpt_response(record: Mapping[str, Any], field: str) -> list[Message]:
    return _check_response([_sharegpt_turn(_require(record, field), field, "the response")], field)


@register_map_fn("sharegpt_preference_map_fn")
def sharegpt_preference_map_fn(record: Mapping[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory / ShareGPT DPO: ``conversations`` [{from, value}], ``chosen`` and ``rejected``
    one {from: gpt, value} each, optional ``system`` string."""
    conversations = _require(record, "conversations")
    if not isinstance(conversations, (list, tuple)):
        got = type(conversations).__name__
        raise RecordFieldError("conversations", f"expected a list of {{from, value}} turns, got {got}")
    prompt = [_sharegpt_turn(turn, "conversations", f"turn {i}") for i, turn in enumerate(conversations)]
    system = _system_prompt(record)
    if system and prompt and prompt[0]["role"] == "system":
        if prompt[0]["content"] != system[0]["content"]:
            raise RecordFieldError("system", "differs from the system turn that starts 'conversations'")
        system = []
    chosen, rejected = _sharegpt_response(record, "chosen"), _sharegpt_response(record, "rejected")
    return _finish(record, system + prompt, chosen, rejected)


@register_map_fn("string_preference_map_fn")
def string_preference_map_fn(record: Mapping[str, Any]) -> dict[str, Any]:
    """Plain strings ``prompt``, ``chosen``, ``rejected`` and an optional ``system`` string."""
    prompt = _system_prompt(record) + [_msg("user", _require_str(record, "prompt"))]
    chosen = [_msg("assistant", _require_str(record, "chosen"))]
    rejected = [_msg("assistant", _require_str(record, "rejected"))]
    return _finish(record, prompt, chosen, rejected)


def _response_messages(record: Mapping[str, Any], field: str) -> list[Message]:
    value = _require(record, field)
    messages = [_msg("assistant", value)] if isinstance(value, str) else _check_messages(value, field)
    return _check_response(messages, field)


@register_map_fn("messages_preference_map_fn")
def messages_preference_map_fn(record: Mapping[str, Any]) -> dict[str, Any]:
    """rmtrain's own format, validated: ``prompt``, ``chosen``, ``rejected`` lists of {role, content}.

    A string ``prompt`` is one user message; a string ``chosen`` / ``rejected`` is one assistant message.
    """
    prompt = _require(record, "prompt")
    if isinstance(prompt, str):
        prompt = [_msg("user", _check_text(prompt, "prompt"))]
    else:
        prompt = _check_messages(prompt, "prompt")
    chosen, rejected = _response_messages(record, "chosen"), _response_messages(record, "rejected")
    return _finish(record, prompt, chosen, rejected)


REFERENCE_WRAPPERS = ("sft", "pretrain")


@register_map_fn("reference_preference_map_fn")
def reference_preference_map_fn(record: Mapping[str, Any]) -> dict[str, Any]:
    """Reference-conditioned (POLAR) data, validated: ``prompt``, ``reference``, ``chosen``, ``rejected``
    lists of {role, content} (strings are one message each), and an optional ``wrapper``: "sft"
    (the default) or "pretrain". The reference is the answer that the candidates are judged against.
    """
    out = messages_preference_map_fn(record)
    out["reference"] = _response_messages(record, "reference")
    wrapper = record.get("wrapper")
    if wrapper is None:
        wrapper = "sft"
    if wrapper not in REFERENCE_WRAPPERS:
        raise RecordFieldError("wrapper", f"expected one of {', '.join(REFERENCE_WRAPPERS)}, got {wrapper!r}")
    out["wrapper"] = wrapper
    return out


# ----------------------------------------------------------------------------- format detection

AUTO_MAP_FN = "auto"  # dataset_map_fn="auto": find the map function from the records' shape
DETECT_RECORDS = 8  # records looked at


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)
    )


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_hh_transcript(value: Any) -> bool:
    return isinstance(value, str) and _HH_ASSISTANT in value and "\n\nHuman:" in value


def _is_sharegpt_turn(value: Any) -> bool:
    return isinstance(value, Mapping) and "from" in value and "value" in value


def _is_ultrafeedback_conversation(value: Any) -> bool:
    return _is_messages(value) and value[-1]["role"] == "assistant" and any(m["role"] == "user" for m in value)


def _is_response_only(value: Any) -> bool:
    """Response turns without the prompt (rmtrain's own format with a string prompt)."""
    return _is_messages(value) and not any(m["role"] == "user" for m in value)


# (map function, what the records look like, the fields it reads, does a record have that shape?), tried in order
RECORD_FORMATS: tuple[tuple[str, str, tuple[str, ...], Callable[[Mapping[str, Any]], bool]], ...] = (
    (
        "sharegpt_preference_map_fn",
        "ShareGPT / LLaMA-Factory (conversations [{from, value}], chosen and rejected {from, value})",
        ("conversations", "chosen", "rejected"),
        lambda r: (
            isinstance(r.get("conversations"), (list, tuple))
            and _is_sharegpt_turn(r.get("chosen"))
            and _is_sharegpt_turn(r.get("rejected"))
        ),
    ),
    (
        "intel_orca_dpo_map_fn",
        "orca DPO pairs (system, question, chosen, rejected strings)",
        ("question", "chosen", "rejected"),
        lambda r: (
            _is_text(r.get("question")) and isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)
        ),
    ),
    (
        "hh_rlhf_map_fn",
        "HH-RLHF transcripts (chosen and rejected '\\n\\nHuman: ...\\n\\nAssistant: ...', the prompt implicit)",
        ("chosen", "rejected"),
        lambda r: "prompt" not in r and _is_hh_transcript(r.get("chosen")) and _is_hh_transcript(r.get("rejected")),
    ),
    (
        "messages_preference_map_fn",
        "messages (prompt, chosen, rejected lists of {role, content})",
        ("prompt", "chosen", "rejected"),
        lambda r: (
            (_is_messages(r.get("prompt")) or _is_text(r.get("prompt")) and _is_response_only(r.get("chosen")))
            and (_is_messages(r.get("chosen")) or isinstance(r.get("chosen"), str))
            and (_is_messages(r.get("rejected")) or isinstance(r.get("rejected"), str))
        ),
    ),
    (
        "orpo_dpo_mix_40k_map_fn",
        "UltraFeedback / argilla (chosen and rejected whole conversations, the prompt their shared first turns)",
        ("chosen", "rejected"),
        lambda r: (
            not _is_messages(r.get("prompt"))
            and _is_ultrafeedback_conversation(r.get("chosen"))
            and _is_ultrafeedback_conversation(r.get("rejected"))
        ),
    ),
    (
        "string_preference_map_fn",
        "plain strings (prompt, chosen, rejected)",
        ("prompt", "chosen", "rejected"),
        lambda r: _is_text(r.get("prompt")) and isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str),
    ),
)


def _field_kinds(records: list[Mapping[str, Any]]) -> str:
    kinds: dict[str, str] = {}
    for record in records:
        for key, value in record.items():
            if value is not None:
                kinds.setdefault(key, type(value).__name__)
    return ", ".join(f"{key} ({kind})" for key, kind in kinds.items()) or "none"


def detect_record_format(
    records: list[Mapping[str, Any]], source: str, option: str = "dataset_map_fn"
) -> tuple[str, str]:
    """(map function name, what the records look like) for the first records of `source`.

    A format is chosen when at least half the records looked at have its shape (`RECORD_FORMATS`;
    the one most have).
    Otherwise a ConfigError lists the fields seen and the map functions whose fields come closest;
    `option` is what the user types where they are to name one (`--map-fn` in a CLI verb, the
    config key `dataset_map_fn` in a config).
    """
    sample = [record for record in records[:DETECT_RECORDS]]
    # The shape most of them have (the first listed on a tie): a broken record among them then
    # fails with its own field named, as with a map function given by name.
    counts = [sum(1 for record in sample if matches(record)) for _name, _shape, _fields, matches in RECORD_FORMATS]
    best = max(range(len(counts)), key=lambda i: (counts[i], -i))
    if sample and 2 * counts[best] >= len(sample):
        return RECORD_FORMATS[best][0], RECORD_FORMATS[best][1]
    seen = {key for record in sample for key, value in record.items() if value is not None}
    ranked = sorted(RECORD_FORMATS, key=lambda fmt: -len(seen & set(fmt[2])) / len(fmt[2]))
    closest = []
    for name, _shape, fields, _matches in ranked[:3]:
        missing = [field for field in fields if field not in seen]
        reads = (
            f"missing {', '.join(missing)}" if missing else "its fields are there but their values have another shape"
        )
        closest.append(f"{name} (reads {', '.join(fields)}; {reads})")
    how = f"{option} NAME" if option.startswith("--") else f"{option}='NAME'"
    raise ConfigError(
        f"{source}: the records' format is not one rmtrain recognises. Fields seen in the first {len(sample)} "
        f"records: {_field_kinds(sample)}. Closest map functions: {'; '.join(closest)}. Name one with {how}, "
        "or write your own map function (a dotted path 'package.module.function')."
    )
