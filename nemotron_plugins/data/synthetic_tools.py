"""A synthetic tool-calling task for the tiny CPU recipes (Tool-N1 setting, issue 18).

Public API::

    TOOLS                                   # name -> JSON-schema tool object
    ToolTaskConfig(sft_correct=0.5, corruption_weights=..., two_call_fraction=0.2, min_tools=2, max_tools=3, ...)
    make_prompt(rng, config) -> ToolPrompt  # request, tools, gold calls
    sft_row(prompt, rng, config) -> dict    # Post-Training SFT row (output right only with p = sft_correct)
    rl_prompt_row(prompt, index) -> dict    # RL prompt row: messages, tools, ground_truth = the gold calls
    render_reply(calls, think) -> str       # "<think>...</think><TOOLCALL>[...]</TOOLCALL>"
    write_tool_task(out_dir, ...) -> dict   # sft.jsonl, prompts_train.jsonl, prompts_heldout.jsonl

    python -m nemotron_plugins.data.synthetic_tools write DIR [--seed 0] [--sft-rows 4000] ...

Each prompt offers 2-3 tools (``min_tools`` / ``max_tools``) of :data:`TOOLS` in the system turn (the row's
``tools`` column, rendered by the ``llama-nemotron-nano`` template as ``<AVAILABLE_TOOLS>[...]</AVAILABLE_TOOLS>``)
and a short request that needs one call (or, with ``two_call_fraction``, two calls of different tools) whose
arguments are taken from the request: ``weather in oslo`` -> ``[{"name": "weather", "arguments": {"city": "oslo"}}]``.
The gold is the exact call list, scored by the ``tool_call`` reward (Tool-N1's binary reward: a
``<think>...</think>`` block and a call block whose calls match exactly).

Room for RL: an SFT row's reply is right only with probability ``sft_correct``; otherwise it is wrong in one way
(``corruption_weights``): one call names the sibling tool (``weather`` <-> ``time``, ``lookup`` <-> ``translate``,
``add`` <-> ``multiply``: the same parameters, values kept), an integer is written as a string, or the reply names
its calls in prose instead of making them (``<think>call weather oslo</think>call weather oslo``: no call block).
The reply's think block restates the tools and the values it read (``<think>call weather oslo</think>``), so each
argument is copied from the request twice.

Held-out prompts are disjoint from training: a request string belongs to the held-out side when its hash says so
(one in ``heldout_share``), so no held-out request is ever seen in SFT or RL training. Every word is lowercase
ASCII, which the ``tiny`` character tokenizer encodes one id per character.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_plugins.data.synthetic import write_jsonl

SYSTEM_PROMPT = "detailed thinking on"
"""Tool-N1 requires reasoning: every prompt is reasoning-on and every reply starts with a think block."""

CITIES: tuple[str, ...] = ("paris", "rome", "oslo", "lima", "cairo", "tokyo", "delhi", "quito")
WORDS: tuple[str, ...] = ("apple", "river", "candle", "mirror", "garden", "silver", "pencil", "rocket")
MAX_NUMBER = 9
"""Argument values come from small closed sets (8 cities, 8 words, one-digit integers). The tiny ~1M-parameter
model learns to read cities and words out of the request in 800 SFT steps, but not digits (docs/tool_calling_rl.md;
with 24 cities and numbers to 99 it read no argument at all)."""


def _schema(name: str, properties: dict[str, str]) -> dict[str, Any]:
    # Name and parameters only (no description / required list): every character is a token of the tiny model.
    return {
        "name": name,
        "parameters": {"type": "object", "properties": {key: {"type": kind} for key, kind in properties.items()}},
    }


TOOLS: dict[str, dict[str, Any]] = {
    "weather": _schema("weather", {"city": "string"}),
    "time": _schema("time", {"city": "string"}),
    "add": _schema("add", {"a": "integer", "b": "integer"}),
    "multiply": _schema("multiply", {"a": "integer", "b": "integer"}),
    "lookup": _schema("lookup", {"word": "string"}),
    "translate": _schema("translate", {"word": "string"}),
}
"""The task's tools as JSON-schema objects (name and parameters)."""

REQUESTS: dict[str, tuple[str, ...]] = {
    "weather": ("weather in {city}", "is it raining in {city}", "how hot is {city}"),
    "time": ("time in {city}", "what time is it in {city}", "clock in {city}"),
    "add": ("add {a} and {b}", "what is {a} plus {b}", "sum of {a} and {b}"),
    "multiply": ("multiply {a} by {b}", "what is {a} times {b}", "product of {a} and {b}"),
    "lookup": ("define {word}", "meaning of {word}", "look up {word}"),
    "translate": ("translate {word}", "say {word} in french", "{word} in french"),
}
"""Request phrasings per tool; ``{arg}`` fields are the call's arguments."""

SIBLINGS: dict[str, str] = {
    "weather": "time",
    "time": "weather",
    "lookup": "translate",
    "translate": "lookup",
    "add": "multiply",
    "multiply": "add",
}
"""The wrong tool an SFT reply may call instead: the same parameters, so a sibling call keeps every value read from the
request (an earlier ``add`` <-> ``convert`` pair drew the sibling's other argument at random, which taught the model
that a number argument need not come from the request)."""

CORRUPTIONS: tuple[str, ...] = ("sibling_tool", "string_number", "no_call")
"""How a wrong SFT reply is wrong: the sibling tool, an integer written as a string, or the calls named in prose
after the think block instead of a call block (:func:`render_prose_reply`). All keep the values read from the
request: a reply that wrote another value than the request's would teach the tiny model that the request does not
determine the arguments (an earlier version had such a ``wrong_value`` corruption, and the model stopped reading
them; docs/tool_calling_rl.md)."""


@dataclass(kw_only=True, slots=True)
class ToolTaskConfig:
    """Settings of the synthetic tool task."""

    sft_correct: float = 0.5
    """Probability that an SFT reply makes exactly the gold calls (otherwise it is corrupted)."""
    corruption_weights: dict[str, float] = field(
        default_factory=lambda: {"sibling_tool": 0.4, "string_number": 0.3, "no_call": 0.3}
    )
    """Relative weights of the :data:`CORRUPTIONS` of a wrong SFT reply (a ``string_number`` draw for calls without
    numbers becomes ``no_call``). Each mistake stays well below half of the replies, so the SFT policy's most likely
    reply is right and RL has a signal in most groups (with the sibling tool in 41% of the replies, the SFT policy
    chose between the two siblings nearly at random and GRPO did not learn the choice)."""
    two_call_fraction: float = 0.2
    """Share of requests that need two calls (of two different tools)."""
    min_tools: int = 2
    """Fewest tools offered in a prompt (the needed ones plus distractors)."""
    max_tools: int = 3
    """Most tools offered in a prompt."""
    heldout_share: int = 8
    """One request string in ``heldout_share`` (by hash) is held out."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sft_correct <= 1.0:
            raise ValueError(f"sft_correct must be in [0, 1], got {self.sft_correct}")
        if not 0.0 <= self.two_call_fraction <= 1.0:
            raise ValueError(f"two_call_fraction must be in [0, 1], got {self.two_call_fraction}")
        if not 2 <= self.min_tools <= self.max_tools <= len(TOOLS):
            raise ValueError(
                f"need 2 <= min_tools <= max_tools <= {len(TOOLS)}, got min_tools={self.min_tools}, "
                f"max_tools={self.max_tools}"
            )
        unknown = sorted(set(self.corruption_weights) - set(CORRUPTIONS))
        if unknown or not self.corruption_weights or any(w < 0 for w in self.corruption_weights.values()):
            raise ValueError(
                f"corruption_weights must map some of {list(CORRUPTIONS)} to weights >= 0, "
                f"got {self.corruption_weights}"
            )
        if sum(self.corruption_weights.values()) <= 0:
            raise ValueError(f"corruption_weights must not all be 0, got {self.corruption_weights}")
        if self.heldout_share < 2:
            raise ValueError(f"heldout_share must be >= 2, got {self.heldout_share}")


@dataclass(kw_only=True, slots=True)
class ToolPrompt:
    """One request, the tools offered, and the gold calls."""

    request: str
    """The user's request."""
    tools: list[dict[str, Any]]
    """The JSON-schema tools offered (the system turn's ``<AVAILABLE_TOOLS>``)."""
    calls: list[dict[str, Any]] = field(default_factory=list)
    """The gold calls, ``{"name", "arguments"}`` each, in request order."""


def _arguments(tool: str, rng: random.Random) -> dict[str, Any]:
    if tool in ("weather", "time"):
        return {"city": rng.choice(CITIES)}
    if tool in ("add", "multiply"):
        return {"a": rng.randint(0, MAX_NUMBER), "b": rng.randint(0, MAX_NUMBER)}
    return {"word": rng.choice(WORDS)}


def is_heldout(request: str, config: ToolTaskConfig) -> bool:
    """Whether ``request`` belongs to the held-out side (a stable hash, the same on every machine)."""
    digest = hashlib.sha256(request.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % config.heldout_share == 0


def make_prompt(rng: random.Random, config: ToolTaskConfig) -> ToolPrompt:
    """Draw one prompt: 1 or 2 needed tools, distractors up to 2-3 tools offered (shuffled), the request text."""
    names = list(TOOLS)
    count = 2 if rng.random() < config.two_call_fraction else 1
    needed = rng.sample(names, count)
    calls = [{"name": name, "arguments": _arguments(name, rng)} for name in needed]
    parts = [rng.choice(REQUESTS[c["name"]]).format(**c["arguments"]) for c in calls]
    request = ", then ".join(parts)
    total = rng.randint(max(config.min_tools, count), config.max_tools)
    offered = needed + rng.sample([n for n in names if n not in needed], total - count)
    rng.shuffle(offered)
    return ToolPrompt(request=request, tools=[TOOLS[n] for n in offered], calls=calls)


def render_reply(calls: Sequence[dict[str, Any]], think: str) -> str:
    """A reply in the Nano template's format: ``<think>think</think><TOOLCALL>[calls]</TOOLCALL>`` (each call
    serialised as the template serialises an assistant's ``tool_calls``).

    Example:
        >>> render_reply([{"name": "add", "arguments": {"a": 1, "b": 2}}], "call add")
        '<think>call add</think><TOOLCALL>[{"name": "add", "arguments": {"a": 1, "b": 2}}]</TOOLCALL>'
    """
    body = ", ".join(json.dumps({"name": c["name"], "arguments": c["arguments"]}, ensure_ascii=False) for c in calls)
    return f"<think>{think}</think><TOOLCALL>[{body}]</TOOLCALL>"


def render_prose_reply(calls: Sequence[dict[str, Any]]) -> str:
    """A reply that names its calls in prose instead of making them (the ``no_call`` corruption): no call block, so
    the ``tool_call`` reward scores it 0.

    Example:
        >>> render_prose_reply([{"name": "weather", "arguments": {"city": "oslo"}}])
        '<think>call weather oslo</think>call weather oslo'
    """
    text = think_text(calls)
    return f"<think>{text}</think>{text}"


def think_text(calls: Sequence[dict[str, Any]]) -> str:
    """The short reasoning of a reply: which tools it calls and the argument values it read from the request.

    Example:
        >>> think_text([{"name": "weather", "arguments": {"city": "oslo"}}, {"name": "add", "arguments": {"a": 3, "b": 4}}])
        'call weather oslo then add 3 4'
    """
    return "call " + " then ".join(" ".join([c["name"], *(str(v) for v in c["arguments"].values())]) for c in calls)


def corrupt(
    calls: list[dict[str, Any]], rng: random.Random, weights: dict[str, float] | None = None
) -> tuple[list[dict[str, Any]], str]:
    """A copy of ``calls`` made wrong in one way (one of :data:`CORRUPTIONS`, drawn with ``weights``; uniform by
    default), and which way. ``no_call`` leaves the calls as they are: the reply is then written in prose, without a
    call block (:func:`sft_row`)."""
    out = [{"name": c["name"], "arguments": dict(c["arguments"])} for c in calls]
    call = out[rng.randrange(len(out))]
    kinds = list(weights) if weights else list(CORRUPTIONS)
    kind = rng.choices(kinds, weights=[weights[k] for k in kinds] if weights else None)[0]
    numeric = [k for k, v in call["arguments"].items() if isinstance(v, int)]
    if kind == "string_number" and not numeric:
        kind = "no_call"
    if kind == "sibling_tool":
        call["name"] = SIBLINGS[call["name"]]  # same parameters: every value read from the request is kept
    elif kind == "string_number":
        key = rng.choice(numeric)
        call["arguments"][key] = str(call["arguments"][key])
    return out, kind


def sft_row(prompt: ToolPrompt, rng: random.Random, config: ToolTaskConfig) -> dict[str, Any]:
    """A Post-Training-format SFT row (plus ``tools``); its reply is right with probability ``sft_correct``."""
    if rng.random() < config.sft_correct:
        calls, kind = prompt.calls, "correct"
    else:
        calls, kind = corrupt(prompt.calls, rng, config.corruption_weights)
    return {
        "input": [{"role": "user", "content": prompt.request}],
        "output": render_prose_reply(calls) if kind == "no_call" else render_reply(calls, think_text(calls)),
        "reasoning": "on",
        "system_prompt": SYSTEM_PROMPT,
        "category": "tool_calling",
        "license": "cc-by-4.0",
        "generator": "nemotron_plugins.data.synthetic_tools",
        "used_in_training": "yes",
        "version": "v1",
        "tools": prompt.tools,
        "ground_truth": prompt.calls,
        "corruption": kind,
    }


def rl_prompt_row(prompt: ToolPrompt, index: int, *, split: str) -> dict[str, Any]:
    """An RL prompt row: the reasoning-on system turn, the request, the tools, the gold calls as ``ground_truth``."""
    return {
        "id": f"tools-{split}-{index}",
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt.request}],
        "tools": prompt.tools,
        "ground_truth": prompt.calls,
        "reasoning": "on",
        "category": "tool_calling",
    }


def _draw(rng: random.Random, config: ToolTaskConfig, count: int, *, heldout: bool) -> list[ToolPrompt]:
    out: list[ToolPrompt] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 1000 * count + 10_000:
            raise RuntimeError(f"could not draw {count} distinct {'held-out' if heldout else 'training'} prompts")
        prompt = make_prompt(rng, config)
        if is_heldout(prompt.request, config) != heldout:
            continue
        key = json.dumps([prompt.request, [t["name"] for t in prompt.tools]])
        if heldout and key in seen:
            continue  # held-out prompts are all distinct
        seen.add(key)
        out.append(prompt)
    return out


def write_tool_task(
    out_dir: str | Path,
    *,
    sft_rows: int = 4000,
    rl_prompts: int = 2000,
    heldout: int = 500,
    seed: int = 0,
    config: ToolTaskConfig | None = None,
) -> dict[str, Any]:
    """Write ``sft.jsonl``, ``prompts_train.jsonl`` and ``prompts_heldout.jsonl`` into ``out_dir``.

    The same arguments give byte-identical files. Returns a summary (counts, the SFT rows' correct share, and the
    number of held-out requests, none of which appears in the training files).
    """
    config = config or ToolTaskConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    held = _draw(rng, config, heldout, heldout=True)
    train_sft = _draw(rng, config, sft_rows, heldout=False)
    train_rl = _draw(rng, config, rl_prompts, heldout=False)
    rows = [sft_row(p, rng, config) for p in train_sft]
    write_jsonl(out / "sft.jsonl", rows)
    write_jsonl(out / "prompts_train.jsonl", [rl_prompt_row(p, i, split="train") for i, p in enumerate(train_rl)])
    write_jsonl(out / "prompts_heldout.jsonl", [rl_prompt_row(p, i, split="heldout") for i, p in enumerate(held)])
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["corruption"]] = kinds.get(row["corruption"], 0) + 1
    summary = {
        "out_dir": str(out),
        "seed": seed,
        "sft_rows": len(rows),
        "sft_reply_kinds": dict(sorted(kinds.items())),
        "rl_train_prompts": len(train_rl),
        "heldout_prompts": len(held),
        "heldout_distinct_requests": len({p.request for p in held}),
        "two_call_heldout": sum(len(p.calls) == 2 for p in held),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nemotron_plugins.data.synthetic_tools write DIR``."""
    parser = argparse.ArgumentParser(prog="python -m nemotron_plugins.data.synthetic_tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write sft.jsonl, prompts_train.jsonl, prompts_heldout.jsonl into DIR")
    write.add_argument("out_dir")
    write.add_argument("--seed", type=int, default=0)
    write.add_argument("--sft-rows", type=int, default=4000)
    write.add_argument("--rl-prompts", type=int, default=2000)
    write.add_argument("--heldout", type=int, default=500)
    write.add_argument("--sft-correct", type=float, default=0.5)
    write.add_argument("--two-call-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    try:
        config = ToolTaskConfig(sft_correct=args.sft_correct, two_call_fraction=args.two_call_fraction)
    except ValueError as exc:
        parser.error(str(exc))
    summary = write_tool_task(
        args.out_dir,
        sft_rows=args.sft_rows,
        rl_prompts=args.rl_prompts,
        heldout=args.heldout,
        seed=args.seed,
        config=config,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
