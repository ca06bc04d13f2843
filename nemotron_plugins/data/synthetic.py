"""Synthetic addition data for the tiny SFT -> GRPO recipes, in the Post-Training-Dataset schema.

Public API::

    ArithmeticConfig(min_value=10, max_value=999, corrupt_fraction=0.0, corruption="forgotten_carry", ...)
    AdditionProblem(a, b)                       # .answer, .prompt(config)
    addition_trace(a, b, *, forget_carry_at=None) -> (reasoning_text, answer)
    sample_problems(n, rng, config, exclude=()) -> list[AdditionProblem]
    sft_rows(problem, config, *, corrupt=False, rng=None) -> list[dict]     # on (+ off) rows
    rl_prompt_row(problem, config, *, mode="on", index=0) -> dict            # messages + ground_truth
    extract_answer(response) -> int | None;  check_answer(response, ground_truth) -> bool
    write_synthetic_dataset(out_dir, n_train, n_heldout, seed, *, config=None) -> SyntheticDataset

A reasoning-on target is a ``<think>`` trace of the column additions, least significant digit first, then the
answer, e.g. for 457 + 68::

    <think>
    7+8=15
    5+6+1=12
    4+0+1=5
    </think>

    525

The off target is the answer alone. Both rows of a pair carry the same answer.

Why corruption: SYSTEM.md section 5 measured that SFT on clean traces leaves a tiny model at ~0.99 held-out accuracy,
so a later GRPO stage has nothing to show. ``corrupt_fraction`` of the training problems get a wrong but
self-consistent trace: ``forgotten_carry`` drops one carry (the trace and the answer both follow from the mistake),
``reversed_answer`` keeps the trace and writes the answer digits reversed. Exactly
``round(corrupt_fraction * n_train)`` problems are corrupted, chosen among those the corruption can change (a carry;
a non-palindromic answer); the manifest records the counts. Held-out data is always clean and shares no problem (in
either operand order) with the training split; RL rows carry the true answer as ``ground_truth``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from nemotron_plugins.chat.toggle import SYSTEM_PROMPTS, format_response, normalize_mode, parse_response

Corruption = Literal["forgotten_carry", "reversed_answer"]
CORRUPTIONS: tuple[str, ...] = ("forgotten_carry", "reversed_answer")
GENERATOR = "nemotron_plugins.data.synthetic"
VERSION = "synthetic-addition-v1"


@dataclass(kw_only=True, slots=True)
class ArithmeticConfig:
    """What the synthetic addition data looks like."""

    min_value: int = 10
    """Smallest operand (inclusive)."""
    max_value: int = 999
    """Largest operand (inclusive)."""
    corrupt_fraction: float = 0.0
    """Fraction of training problems whose SFT trace is corrupted (0 = clean; SYSTEM.md section 5 used 0.5)."""
    corruption: Corruption = "forgotten_carry"
    """How a trace is corrupted: ``forgotten_carry`` or ``reversed_answer``."""
    reversed_answer_fraction: float = 0.0
    """Fraction of training problems whose final answer (after any ``corruption``) is also written with its digits
    reversed, chosen independently of ``corrupt_fraction``: a second, answer-level mistake on top of the trace-level
    one (0 = none)."""
    include_off: bool = True
    """Also write the reasoning-off row (answer only) of every SFT problem."""
    prompt_format: str = "What is {a} + {b}?"
    """User prompt, formatted with ``a`` and ``b``."""
    category: str = "math"
    """Value of the ``category`` field."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(f"need 0 <= min_value <= max_value, got {self.min_value}..{self.max_value}")
        if not 0.0 <= self.corrupt_fraction <= 1.0:
            raise ValueError(f"corrupt_fraction must be in [0, 1], got {self.corrupt_fraction}")
        if not 0.0 <= self.reversed_answer_fraction <= 1.0:
            raise ValueError(f"reversed_answer_fraction must be in [0, 1], got {self.reversed_answer_fraction}")
        if self.corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got {self.corruption!r}")
        if "{a}" not in self.prompt_format or "{b}" not in self.prompt_format:
            raise ValueError(f"prompt_format must contain {{a}} and {{b}}, got {self.prompt_format!r}")


@dataclass(frozen=True, slots=True)
class AdditionProblem:
    """``a + b``."""

    a: int
    b: int

    @property
    def answer(self) -> int:
        """The true sum."""
        return self.a + self.b

    @property
    def key(self) -> tuple[int, int]:
        """Order-free identity (``a + b`` and ``b + a`` are one problem)."""
        return (min(self.a, self.b), max(self.a, self.b))

    def prompt(self, config: ArithmeticConfig) -> str:
        """The user message."""
        return config.prompt_format.format(a=self.a, b=self.b)


def addition_trace(a: int, b: int, *, forget_carry_at: int | None = None) -> tuple[str, int]:
    """Column addition trace of ``a + b``, least significant digit first, and the answer it leads to.

    Args:
        a: First operand (>= 0).
        b: Second operand (>= 0).
        forget_carry_at: Column index (0 = units) whose outgoing carry is forgotten; the rest of the trace and the
            answer follow consistently from the mistake. ``None`` for the correct trace.

    Returns:
        ``(reasoning, answer)``: one ``x+y[+1]=s`` line per column, and the (possibly wrong) sum.

    Example:
        >>> addition_trace(457, 68)
        ('7+8=15\\n5+6+1=12\\n4+0+1=5', 525)
        >>> addition_trace(457, 68, forget_carry_at=0)
        ('7+8=15\\n5+6=11\\n4+0+1=5', 515)
    """
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got {a} and {b}")
    da, db = str(a)[::-1], str(b)[::-1]
    width = max(len(da), len(db))
    lines, digits, carry = [], [], 0
    for column in range(width):
        x = int(da[column]) if column < len(da) else 0
        y = int(db[column]) if column < len(db) else 0
        total = x + y + carry
        lines.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        digits.append(total % 10)
        carry = total // 10
        if column == forget_carry_at:
            carry = 0
    if carry:
        digits.append(carry)
    return "\n".join(lines), int("".join(str(d) for d in reversed(digits)))


def _carry_columns(a: int, b: int) -> list[int]:
    da, db = str(a)[::-1], str(b)[::-1]
    columns, carry = [], 0
    for column in range(max(len(da), len(db))):
        total = (int(da[column]) if column < len(da) else 0) + (int(db[column]) if column < len(db) else 0) + carry
        carry = total // 10
        if carry:
            columns.append(column)
    return columns


def corrupted_target(problem: AdditionProblem, config: ArithmeticConfig, rng: random.Random) -> tuple[str, int] | None:
    """A wrong, self-consistent ``(reasoning, answer)`` for ``problem``, or ``None`` if the corruption cannot apply."""
    if config.corruption == "forgotten_carry":
        columns = _carry_columns(problem.a, problem.b)
        if not columns:
            return None
        return addition_trace(problem.a, problem.b, forget_carry_at=rng.choice(columns))
    reasoning, answer = addition_trace(problem.a, problem.b)
    reversed_answer = int(str(answer)[::-1])
    return None if reversed_answer == answer else (reasoning, reversed_answer)


def sample_problems(
    n: int, rng: random.Random, config: ArithmeticConfig, exclude: Iterable[tuple[int, int]] = ()
) -> list[AdditionProblem]:
    """Draw ``n`` distinct problems (distinct also up to operand order) not in ``exclude`` (keys)."""
    span = config.max_value - config.min_value + 1
    available = span * (span + 1) // 2
    seen = set(exclude)
    if n + len(seen) > available:
        raise ValueError(
            f"asked for {n} distinct problems but operands {config.min_value}..{config.max_value} allow {available}"
            + (f" ({len(seen)} excluded)" if seen else "")
        )
    out: list[AdditionProblem] = []
    while len(out) < n:
        problem = AdditionProblem(
            rng.randint(config.min_value, config.max_value), rng.randint(config.min_value, config.max_value)
        )
        if problem.key not in seen:
            seen.add(problem.key)
            out.append(problem)
    return out


def _row(problem: AdditionProblem, config: ArithmeticConfig, mode: str, output: str) -> dict[str, Any]:
    return {
        "input": [{"role": "user", "content": problem.prompt(config)}],
        "output": output,
        "reasoning": mode,
        "system_prompt": SYSTEM_PROMPTS[mode],
        "category": config.category,
        "license": "cc-by-4.0",
        "generator": GENERATOR,
        "used_in_training": "yes",
        "version": VERSION,
    }


def sft_rows(
    problem: AdditionProblem,
    config: ArithmeticConfig,
    *,
    corrupt: bool = False,
    rng: random.Random | None = None,
    reverse_answer: bool = False,
) -> tuple[list[dict[str, Any]], bool]:
    """SFT rows of one problem: the reasoning-on row and, with ``config.include_off``, the off row.

    Args:
        problem: The problem.
        config: Data settings.
        corrupt: Use a corrupted trace (when the corruption applies to this problem).
        rng: Randomness for choosing what to corrupt.
        reverse_answer: Also write the final answer with its digits reversed (the trace is kept); a palindromic
            answer is left as it is.

    Returns:
        ``(rows, corrupted)``: the rows, and whether they were actually corrupted (by ``corrupt``).
    """
    reasoning, answer, corrupted = _sft_target(problem, config, corrupt=corrupt, rng=rng)
    return _answer_rows(problem, config, reasoning, _reversed(answer) if reverse_answer else answer), corrupted


def _sft_target(
    problem: AdditionProblem, config: ArithmeticConfig, *, corrupt: bool, rng: random.Random | None
) -> tuple[str, int, bool]:
    """``(reasoning, answer, corrupted)`` of one SFT problem (see :func:`sft_rows`)."""
    target = corrupted_target(problem, config, rng or random.Random(0)) if corrupt else None
    reasoning, answer = target if target is not None else addition_trace(problem.a, problem.b)
    return reasoning, answer, target is not None


def _reversed(answer: int) -> int:
    """``answer`` with its digits reversed (``120`` -> ``21``)."""
    return int(str(answer)[::-1])


def _answer_rows(problem: AdditionProblem, config: ArithmeticConfig, reasoning: str, answer: int) -> list[dict]:
    """The reasoning-on row and, with ``config.include_off``, the off row, both with ``answer``."""
    rows = [_row(problem, config, "on", format_response(str(answer), reasoning, mode="on"))]
    if config.include_off:
        rows.append(_row(problem, config, "off", format_response(str(answer), mode="off")))
    return rows


def rl_prompt_row(problem: AdditionProblem, config: ArithmeticConfig, *, mode: str = "on", index: int = 0) -> dict:
    """An RL prompt: chat ``messages`` (system toggle + user), the true answer and metadata."""
    resolved = normalize_mode(mode)
    return {
        "id": f"add-{index:06d}-{resolved}",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPTS[resolved]},
            {"role": "user", "content": problem.prompt(config)},
        ],
        "ground_truth": str(problem.answer),
        "reasoning": resolved,
        "category": config.category,
        "a": problem.a,
        "b": problem.b,
    }


_INTEGER = re.compile(r"-?\d+")


def extract_answer(response: str) -> int | None:
    """The final answer of a response: the last integer after the last ``</think>``, or ``None``.

    Returns ``None`` when there is no integer or the think block is unclosed (the answer is then empty).

    Example:
        >>> extract_answer("<think>\\n7+8=15\\n</think>\\n\\n15")
        15
    """
    found = _INTEGER.findall(parse_response(response).answer)
    return int(found[-1]) if found else None


def check_answer(response: str, ground_truth: int | str) -> bool:
    """Whether the response's final answer equals ``ground_truth`` (format problems are not judged here)."""
    extracted = extract_answer(response)
    return extracted is not None and extracted == int(str(ground_truth).strip())


@dataclass(slots=True)
class SyntheticDataset:
    """Where :func:`write_synthetic_dataset` wrote what."""

    out_dir: Path
    """Output directory."""
    files: dict[str, Path] = field(default_factory=dict)
    """``sft_train``, ``sft_heldout``, ``rl_train``, ``rl_heldout``, ``manifest`` -> path."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Counts (problems, rows, corrupted) and the settings used; also in ``manifest.json``."""


def write_jsonl(
    path: Path, rows: Iterable[dict[str, Any]], *, sort_keys: bool = False, ensure_ascii: bool = False
) -> int:
    """Write ``rows`` as JSON lines (UTF-8, one object per line) for the synthetic tasks' files; returns the count."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n")
            count += 1
    return count


def write_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    n_train: int,
    n_heldout: int,
    seed: int = 0,
    *,
    config: ArithmeticConfig | None = None,
) -> SyntheticDataset:
    """Write the synthetic addition dataset as JSONL files.

    Files: ``sft_train.jsonl`` / ``sft_heldout.jsonl`` (Post-Training-Dataset rows; heldout always clean),
    ``rl_train.jsonl`` / ``rl_heldout.jsonl`` (RL prompt rows, reasoning on, true answers) and ``manifest.json``.

    Args:
        out_dir: Directory to create or fill.
        n_train: Training problems (each gives an on row, plus an off row with ``include_off``).
        n_heldout: Held-out problems, disjoint from the training problems.
        seed: Random seed; the same arguments give byte-identical files.
        config: Data settings (defaults: operands 10..999, clean traces).

    Returns:
        A :class:`SyntheticDataset` with the paths and counts.
    """
    if n_train < 0 or n_heldout < 0:
        raise ValueError(f"n_train and n_heldout must be >= 0, got {n_train} and {n_heldout}")
    config = config or ArithmeticConfig()
    rng = random.Random(seed)
    train = sample_problems(n_train, rng, config)
    heldout = sample_problems(n_heldout, rng, config, exclude=(p.key for p in train))
    corrupt_rng = random.Random(seed + 1)
    # Corrupt exactly round(fraction * n_train) problems, chosen among those the corruption can change.
    wanted = round(config.corrupt_fraction * len(train))
    corruptible = [i for i, p in enumerate(train) if corrupted_target(p, config, random.Random(0)) is not None]
    chosen = set(corrupt_rng.sample(corruptible, min(wanted, len(corruptible))))
    # Reversed answers: drawn from their own stream, so the files without them are unchanged.
    reversed_wanted = round(config.reversed_answer_fraction * len(train))
    reversed_chosen = set(random.Random(seed + 2).sample(range(len(train)), reversed_wanted))
    sft_train: list[dict[str, Any]] = []
    corrupted = reversed_answers = 0
    for i, problem in enumerate(train):
        reasoning, answer, did = _sft_target(problem, config, corrupt=i in chosen, rng=corrupt_rng)
        corrupted += did
        if i in reversed_chosen:
            written = _reversed(answer)
            reversed_answers += written != answer  # a palindrome reads the same reversed (121; 110 -> 11 changes)
            answer = written
        rows = _answer_rows(problem, config, reasoning, answer)
        sft_train.extend(rows)
    sft_heldout = [row for problem in heldout for row in sft_rows(problem, config)[0]]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = SyntheticDataset(out_dir=out)
    result.files = {name: out / f"{name}.jsonl" for name in ("sft_train", "sft_heldout", "rl_train", "rl_heldout")}
    counts = {
        "sft_train": write_jsonl(result.files["sft_train"], sft_train),
        "sft_heldout": write_jsonl(result.files["sft_heldout"], sft_heldout),
        "rl_train": write_jsonl(
            result.files["rl_train"], (rl_prompt_row(p, config, index=i) for i, p in enumerate(train))
        ),
        "rl_heldout": write_jsonl(
            result.files["rl_heldout"], (rl_prompt_row(p, config, index=i) for i, p in enumerate(heldout))
        ),
    }
    result.stats = {
        "seed": seed,
        "config": asdict(config),
        "train_problems": len(train),
        "heldout_problems": len(heldout),
        "rows": counts,
        "corruption_requested": wanted,
        "corruptible_problems": len(corruptible),
        "corrupted": corrupted,
        "corrupted_fraction": corrupted / len(train) if train else 0.0,
        "reversed_answers_requested": reversed_wanted,
        "reversed_answers": reversed_answers,
    }
    result.files["manifest"] = out / "manifest.json"
    result.files["manifest"].write_text(json.dumps(result.stats, indent=2) + "\n", encoding="utf-8")
    return result
