"""Preference pairs from HelpSteer-style JSONL files, validated at the boundary, and their token encoding.

One JSON object per line::

    {"prompt": "text" | [{"role": "user", "content": "..."}, ...],
     "chosen": "the better reply",          # or "chosen_response"
     "rejected": "the worse reply",         # or "rejected_response"
     "chosen_reward": 3.0, "rejected_reward": 1.0,   # optional (HelpSteer attribute scores, reward-model scores)
     "margin": 1.0}                         # optional (Bradley-Terry margin)

Rewards are needed by offline RPO (and may be given as both or neither); a string prompt is one user turn. Every
problem raises :class:`PreferenceDataError` naming the file and the 1-based line.

Encoding (:func:`encode_conversation`): the prompt rendered with the run's chat template and the assistant generation
header (as the RL prompts are), then the reply's tokens and the end-of-turn token, so a reply sampled by the policy,
a reply read from a file and the reward model's input are the same token sequence.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PreferenceDataError(ValueError):
    """A preference file cannot be used; the message names the file and line."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PreferencePair:
    """One validated preference pair."""

    messages: list[dict[str, str]]
    """The prompt as chat messages (ending with a user turn)."""
    chosen: str
    """The preferred reply."""
    rejected: str
    """The other reply."""
    chosen_reward: float | None = None
    """Score of ``chosen`` (HelpSteer attributes or a reward model), if given."""
    rejected_reward: float | None = None
    """Score of ``rejected``, if given."""
    margin: float | None = None
    """Bradley-Terry margin, if given."""
    where: str = ""
    """``file:line`` the pair came from."""


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise PreferenceDataError(f"{where}: 'prompt' is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise PreferenceDataError(f"{where}: 'prompt' must be a string or a non-empty list of chat messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise PreferenceDataError(f"{where}: prompt[{i}] must be {{'role': str, 'content': str}}, got {m!r:.80}")
        if m["role"] not in ("system", "user", "assistant"):
            raise PreferenceDataError(f"{where}: prompt[{i}].role={m['role']!r} (use system / user / assistant)")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise PreferenceDataError(f"{where}: the prompt must end with a user turn, got {out[-1]['role']!r}")
    return out


def _number(row: Mapping[str, Any], key: str, where: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PreferenceDataError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _reply(row: Mapping[str, Any], keys: tuple[str, str], where: str) -> str:
    for key in keys:
        if key in row:
            value = row[key]
            if not isinstance(value, str) or not value.strip():
                raise PreferenceDataError(f"{where}: {key!r} must be a non-empty string")
            return value
    raise PreferenceDataError(f"{where}: missing {keys[0]!r} (or {keys[1]!r})")


def parse_pair(row: Any, where: str) -> PreferencePair:
    """Validate one decoded row (see the module docstring).

    Raises:
        PreferenceDataError: Naming ``where`` and the field.
    """
    if not isinstance(row, Mapping):
        raise PreferenceDataError(f"{where}: a preference row must be a JSON object, got {type(row).__name__}")
    if "prompt" not in row:
        raise PreferenceDataError(f"{where}: missing 'prompt'")
    messages = _messages(row["prompt"], where)
    chosen = _reply(row, ("chosen", "chosen_response"), where)
    rejected = _reply(row, ("rejected", "rejected_response"), where)
    rc, rr = _number(row, "chosen_reward", where), _number(row, "rejected_reward", where)
    if (rc is None) != (rr is None):
        raise PreferenceDataError(f"{where}: give both 'chosen_reward' and 'rejected_reward' or neither")
    return PreferencePair(
        messages=messages,
        chosen=chosen,
        rejected=rejected,
        chosen_reward=rc,
        rejected_reward=rr,
        margin=_number(row, "margin", where),
        where=where,
    )


def read_preference_pairs(
    path: str | os.PathLike[str], *, field: str = "data.path", need_rewards: bool = False, limit: int | None = None
) -> list[PreferencePair]:
    """Every pair of a JSONL file (blank lines skipped).

    Args:
        path: The file.
        field: The config field that named it (for the error when the file is missing).
        need_rewards: Every pair must carry ``chosen_reward`` / ``rejected_reward`` (offline RPO).
        limit: Read at most this many pairs.

    Raises:
        PreferenceDataError: A missing or empty file, undecodable JSON or an invalid row (file and line named).
    """
    p = Path(path)
    if not p.is_file():
        raise PreferenceDataError(f"{field}: {p} is not a file (a JSONL of preference pairs)")
    pairs: list[PreferencePair] = []
    with p.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{p}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PreferenceDataError(f"{where}: not valid JSON ({err.msg})") from None
            pair = parse_pair(row, where)
            if need_rewards and pair.chosen_reward is None:
                raise PreferenceDataError(f"{where}: offline RPO needs 'chosen_reward' and 'rejected_reward'")
            pairs.append(pair)
            if limit is not None and len(pairs) >= limit:
                break
    if not pairs:
        raise PreferenceDataError(f"{field}: {p} holds no preference pairs")
    return pairs


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]], template: str) -> list[int]:
    """The prompt's token ids: ``template`` with the assistant generation header and the tokenizer's bos token."""
    from nemotron_plugins.chat.render import render_chat

    bos = getattr(tokenizer, "bos_token", None) or "<|begin_of_text|>"
    text = render_chat([dict(m) for m in messages], template=template, add_generation_prompt=True, bos_token=bos)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def reply_ids(tokenizer: Any, reply: str) -> list[int]:
    """The reply's token ids followed by the end-of-turn (eos) token."""
    ids = list(tokenizer(reply, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    return [*ids, eos] if eos is not None else ids


def encode_conversation(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], reply: str, template: str
) -> tuple[list[int], int]:
    """``(token ids, prompt length)`` of ``messages`` + ``reply`` (see the module docstring)."""
    prompt = prompt_ids(tokenizer, messages, template)
    return prompt + reply_ids(tokenizer, reply), len(prompt)
