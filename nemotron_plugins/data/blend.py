"""Multi-domain data blends in the Nemotron-CrossThink style: weighted sources, MCQ / open-ended templates, and
filtering to answers the recipe's reward can verify.

``data.blend`` lists :class:`~nemotron_plugins.launch.recipe_config.BlendSource` entries. Each source is read
through :func:`~nemotron_plugins.data.rows.read_rows` (JSONL, parquet, a directory of them, a ``save_to_disk``
directory), filtered by ``data.splits`` / ``data.reasoning`` like ``data.path`` is, then:

1. **Template** (``template``): ``as_is`` keeps the prompt row unchanged; ``mcq`` writes the question, the lettered
   options and an instruction to answer with the letter (gold: the letter, ``metadata.choices``: the options);
   ``open_ended`` writes the question without options and asks for a boxed answer (gold: the answer text, the
   correct option's text when the source gives a letter). A templated source row carries ``question`` (else its last
   user turn is the question), ``options`` or ``choices`` (a list of texts, or ``{"A": text, ...}``; else
   ``metadata.choices``; MMLU-Pro style rows read as they are) and its gold in ``ground_truth`` (or ``answer``): a
   letter, a 0-based option index, or the option / answer text.
2. **Verifiable filter**: a row is kept only when each reward that scores it and has a gold check (``math``:
   math-verify must parse the gold and accept ``\\boxed{gold}``; ``mcq``: the gold must be a valid letter of its
   options) gives full marks to the reference reply, scored in-process by the real reward with the recipe's options.
   Rows scored only by rewards without a gold check are kept and counted as ``unchecked``. Every drop is counted
   per source and reason, with example lines.
3. **Sampling**: the blend has ``data.num_train_samples`` rows, or, when that is unset, the most rows the weights
   allow without repeating a row of any source. Each source's share is ``weight / sum(weights)`` of it (largest
   remainder rounding); a source's rows are taken in a seeded permutation, and only a source that runs out is
   drawn again (a new permutation), counted as ``repeated``. The blend's order is a seeded shuffle. Everything
   derives from the run's ``seed``.

The report (:class:`BlendReport`) is printed at the start of the run and written to
``<output_dir>/data_blend_report.json``.

Public API: :func:`build_prompt_blend` (RL prompt rows), :func:`build_sft_blend` (SFT rows), :func:`apply_template`,
:func:`apportion`, :func:`sample_blend`, :class:`GoldChecker`, :class:`BlendReport`, :data:`TEMPLATES`,
:data:`DROP_REASONS`.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemotron_plugins.data.rows import RawRow, read_rows

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import BlendSource, DataConfig, RewardSpec

TEMPLATES: tuple[str, ...] = ("as_is", "mcq", "open_ended")
"""Values of ``data.blend[i].template``."""

LETTERS = "ABCDEFGHIJ"
"""Option letters of the ``mcq`` template (at most ten options, as the ``mcq`` reward reads)."""

MCQ_INSTRUCTION = 'Answer with the letter of the correct option on the last line, as "Answer: X".'
"""The last paragraph of an ``mcq`` prompt."""

OPEN_ENDED_INSTRUCTION = "Give your final answer within \\boxed{}."
"""The last paragraph of an ``open_ended`` prompt."""

DROP_REASONS: dict[str, str] = {
    "bad_row": "the line is not a JSON object, or lacks the prompt / ground_truth fields",
    "no_question": "no question text (question field or last user turn)",
    "no_options": "mcq: fewer than two options (options / metadata.choices)",
    "too_many_options": f"mcq: more than {len(LETTERS)} options",
    "no_gold": "no ground_truth (or answer)",
    "gold_not_an_option": "the gold is not a letter, index or text of one of the options",
    "answer_too_long": "open_ended: the answer has more words than max_answer_words",
    "unverifiable": "a reward that scores the row cannot verify its gold",
}
"""Why a source row is dropped, and what each reason means."""

MAX_EXAMPLE_LINES = 5


class BlendError(ValueError):
    """A blend cannot be built as configured; the message names ``data.blend[i]`` and the file."""


class _Drop(Exception):  # noqa: N818 - control flow inside the filter, never escapes this module
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SourceReport:
    """What one source contributed."""

    index: int
    """Position in ``data.blend``."""
    domain: str
    """The source's domain name (``domain``, else the file / directory name)."""
    path: str
    """Where the rows were read."""
    template: str
    """The template applied."""
    weight: float
    """The configured weight."""
    read: int = 0
    """Rows read (after ``data.splits`` / ``data.reasoning``)."""
    kept: int = 0
    """Rows that passed the template and the verifiable filter."""
    other_split: int = 0
    """Rows left out by ``data.splits`` / ``data.reasoning`` (not drops)."""
    unchecked: int = 0
    """Kept rows no reward could check the gold of (scored only by rewards without a gold check)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Drops per reason (keys of :data:`DROP_REASONS`)."""
    example_lines: dict[str, list[int]] = field(default_factory=dict)
    """Up to five line numbers per drop reason."""
    first_detail: dict[str, str] = field(default_factory=dict)
    """The message of the first drop per reason."""
    drawn: int = 0
    """Rows of the blend drawn from this source."""
    repeated: int = 0
    """Draws beyond the source's kept rows (sampled again once the source was exhausted)."""

    def drop(self, line: int, reason: str, detail: str) -> None:
        """Record a dropped row."""
        if reason not in DROP_REASONS:
            raise KeyError(f"unknown drop reason {reason!r}; known: {', '.join(DROP_REASONS)}")
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        lines = self.example_lines.setdefault(reason, [])
        if len(lines) < MAX_EXAMPLE_LINES:
            lines.append(line)
        self.first_detail.setdefault(reason, detail)

    @property
    def num_dropped(self) -> int:
        """Rows dropped for any reason."""
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "index": self.index,
            "domain": self.domain,
            "path": self.path,
            "template": self.template,
            "weight": self.weight,
            "read": self.read,
            "kept": self.kept,
            "other_split": self.other_split,
            "unchecked": self.unchecked,
            "dropped": dict(sorted(self.dropped.items())),
            "example_lines": {k: list(v) for k, v in sorted(self.example_lines.items())},
            "first_detail": dict(sorted(self.first_detail.items())),
            "drawn": self.drawn,
            "repeated": self.repeated,
        }


@dataclass(slots=True)
class BlendReport:
    """Per-source and per-domain counts of a built blend."""

    seed: int
    """The seed the blend was sampled with."""
    total: int = 0
    """Rows in the blend."""
    sources: list[SourceReport] = field(default_factory=list)
    """One entry per ``data.blend`` source."""

    def domains(self) -> dict[str, dict[str, int]]:
        """``domain -> {"kept", "dropped", "drawn", "repeated"}`` summed over its sources."""
        out: dict[str, dict[str, int]] = {}
        for s in self.sources:
            d = out.setdefault(s.domain, {"kept": 0, "dropped": 0, "drawn": 0, "repeated": 0})
            d["kept"] += s.kept
            d["dropped"] += s.num_dropped
            d["drawn"] += s.drawn
            d["repeated"] += s.repeated
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "seed": self.seed,
            "total": self.total,
            "sources": [s.to_dict() for s in self.sources],
            "domains": self.domains(),
        }

    def format(self) -> str:
        """A human-readable multi-line summary."""
        weight_sum = sum(s.weight for s in self.sources) or 1.0
        lines = [f"data blend: {self.total} rows from {len(self.sources)} sources (seed {self.seed})"]
        for s in self.sources:
            share = s.drawn / self.total if self.total else 0.0
            lines.append(
                f"  [{s.index}] {s.domain} ({s.template}, weight {s.weight:g} = {s.weight / weight_sum:.1%}): "
                f"read {s.read}, kept {s.kept}, dropped {s.num_dropped}, drawn {s.drawn} ({share:.1%})"
                + (f", repeated {s.repeated} (source exhausted)" if s.repeated else "")
                + (f", {s.unchecked} kept unchecked (no reward with a gold check)" if s.unchecked else "")
                + (f", {s.other_split} outside data.splits / data.reasoning" if s.other_split else "")
                + f"  <- {s.path}"
            )
            for reason in sorted(s.dropped):
                where = ", ".join(str(n) for n in s.example_lines.get(reason, []))
                lines.append(f"      {reason}: {s.dropped[reason]} (lines {where}) - {s.first_detail.get(reason, '')}")
        domains = self.domains()
        if len(domains) < len(self.sources):
            for name, d in domains.items():
                lines.append(
                    f"  domain {name}: kept {d['kept']}, dropped {d['dropped']}, drawn {d['drawn']}, "
                    f"repeated {d['repeated']}"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


# ----------------------------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------------------------


def _options(row: Mapping[str, Any]) -> list[str] | None:
    options = row.get("options", row.get("choices"))
    if options is None:
        metadata = row.get("metadata")
        options = metadata.get("choices") if isinstance(metadata, Mapping) else None
    if options is None:
        return None
    if isinstance(options, Mapping):
        keys = [str(k).strip().upper() for k in options]
        if keys != list(LETTERS[: len(keys)]):
            raise _Drop("gold_not_an_option", f"options keys {keys} are not the letters A, B, C, ... in order")
        return [str(v) for v in options.values()]
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise _Drop("no_options", f"options must be a list of texts or a letter -> text mapping, got {options!r}")
    return [str(v) for v in options]


def _question(row: Mapping[str, Any]) -> str:
    question = row.get("question")
    if question is None:
        turns = row.get("messages") if "messages" in row else row.get("input")
        if isinstance(turns, str):
            question = turns
        elif isinstance(turns, Sequence):
            users = [m for m in turns if isinstance(m, Mapping) and m.get("role") == "user"]
            question = users[-1].get("content") if users else None
    if not isinstance(question, str) or not question.strip():
        raise _Drop("no_question", "no 'question' field and no user turn with text")
    return question.strip()


def _gold(row: Mapping[str, Any]) -> Any:
    gold = row.get("ground_truth", row.get("answer"))
    if gold is None or (isinstance(gold, str) and not gold.strip()):
        raise _Drop("no_gold", "no 'ground_truth' (or 'answer')")
    return gold


def _gold_index(gold: Any, options: Sequence[str]) -> int:
    """The 0-based index of the correct option: a letter (``C``, ``(c)``), an index, or an option's text."""
    if isinstance(gold, bool):
        raise _Drop("gold_not_an_option", f"gold {gold!r} is a boolean")
    if isinstance(gold, int):
        if 0 <= gold < len(options):
            return gold
        raise _Drop("gold_not_an_option", f"gold index {gold} is outside the {len(options)} options")
    text = str(gold).strip()
    letter = text.strip("()[]. ").upper()
    if len(letter) == 1 and letter in LETTERS:
        index = LETTERS.index(letter)
        if index < len(options):
            return index
        raise _Drop("gold_not_an_option", f"gold letter {letter} is outside the {len(options)} options")
    matches = [i for i, o in enumerate(options) if o.strip() == text]
    if len(matches) == 1:
        return matches[0]
    raise _Drop("gold_not_an_option", f"gold {text[:80]!r} is not a letter, index or text of one of the options")


def _system_turns(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    turns = row.get("messages") if "messages" in row else row.get("input")
    system = [dict(m) for m in turns or [] if isinstance(m, Mapping) and m.get("role") == "system"]
    if not system and row.get("system_prompt"):
        system = [{"role": "system", "content": str(row["system_prompt"])}]
    return system[:1]


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    """The ``mcq`` template's user turn: the question, the lettered options, the instruction."""
    lines = [f"({LETTERS[i]}) {option.strip()}" for i, option in enumerate(options)]
    return f"{question}\n\nOptions:\n" + "\n".join(lines) + f"\n\n{MCQ_INSTRUCTION}"


def open_ended_prompt(question: str) -> str:
    """The ``open_ended`` template's user turn: the question and the instruction."""
    return f"{question}\n\n{OPEN_ENDED_INSTRUCTION}"


def apply_template(row: Mapping[str, Any], template: str, *, max_answer_words: int | None = None) -> dict[str, Any]:
    """The source row rewritten by ``template`` as a Post-Training RL prompt row (``messages``, ``ground_truth``).

    Args:
        row: A decoded source row.
        template: One of :data:`TEMPLATES`.
        max_answer_words: ``open_ended`` only: drop answers with more words (CrossThink keeps short answers).

    Returns:
        The new row (``as_is``: the row itself, unchanged).

    Raises:
        _Drop: (internal) with the reason the row cannot take the template.
    """
    if template == "as_is":
        return dict(row)
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; valid: {list(TEMPLATES)}")
    question = _question(row)
    gold = _gold(row)
    options = _options(row)
    dropped = ("messages", "input", "system_prompt", "options", "choices", "question")
    out = {k: v for k, v in row.items() if k not in dropped}
    metadata = dict(row["metadata"]) if isinstance(row.get("metadata"), Mapping) else {}
    if template == "mcq":
        if options is None or len(options) < 2:
            raise _Drop("no_options", f"mcq needs at least two options, got {0 if options is None else len(options)}")
        if len(options) > len(LETTERS):
            raise _Drop("too_many_options", f"{len(options)} options; the mcq template letters A-{LETTERS[-1]}")
        letter = LETTERS[_gold_index(gold, options)]
        out["ground_truth"] = letter
        metadata["choices"] = list(options)
        text = mcq_prompt(question, options)
    else:
        answer = options[_gold_index(gold, options)] if options else str(gold).strip()
        if max_answer_words is not None and len(answer.split()) > max_answer_words:
            raise _Drop(
                "answer_too_long", f"answer has {len(answer.split())} words (max_answer_words={max_answer_words})"
            )
        out["ground_truth"] = answer
        metadata.pop("choices", None)
        text = open_ended_prompt(question)
    out.pop("answer", None)
    out["messages"] = [*_system_turns(row), {"role": "user", "content": text}]
    if metadata:
        out["metadata"] = metadata
    else:
        out.pop("metadata", None)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Verifiable filter
# ----------------------------------------------------------------------------------------------------------------


def _math_reference(gold: Any) -> str:
    from nemotron_plugins.rewards.math import strip_math_delimiters

    return f"The answer is \\boxed{{{strip_math_delimiters(str(gold).strip())}}}."


def _mcq_reference(gold: Any) -> str:
    if isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(LETTERS):
        return f"Answer: {LETTERS[gold]}"
    return f"Answer: {str(gold).strip().strip('()[]. ').upper()}"


REFERENCE_REPLIES: dict[str, Callable[[Any], str]] = {"math": _math_reference, "mcq": _mcq_reference}
"""Rewards with a gold check: the reply a perfect model would give for a gold, which the reward must score 1.0."""


class GoldChecker:
    """Checks that the rewards scoring a row can verify its gold, with the recipe's rewards and options.

    Args:
        rewards: The recipe's reward specs (name, options); the ones named in :data:`REFERENCE_REPLIES` are built
            in-process and score the reference reply of each row's gold.
    """

    def __init__(self, rewards: Sequence[RewardSpec]) -> None:
        from nemotron_plugins.rewards.base import build_reward

        self.names = [r.name for r in rewards]
        self._rewards = {r.name: build_reward(r.name, **r.options) for r in rewards if r.name in REFERENCE_REPLIES}

    def close(self) -> None:
        """Close rewards that hold resources."""
        for reward in self._rewards.values():
            close = getattr(reward, "close", None)
            if callable(close):
                close()

    def check(self, row: Mapping[str, Any]) -> bool:
        """``True`` when some reward checked the gold, ``False`` when none of the row's rewards has a check.

        Raises:
            _Drop: (internal) ``unverifiable`` with the reward's message when a check fails.
        """
        from nemotron_plugins.rewards.base import RewardSample, RewardStatus

        names = [row["reward"]] if row.get("reward") is not None else self.names
        checked = False
        for name in names:
            reward = self._rewards.get(name)
            if reward is None:
                continue
            gold = row.get("ground_truth")
            sample = RewardSample(
                completion=REFERENCE_REPLIES[name](gold),
                ground_truth=gold,
                prompt=row.get("messages"),
                metadata=dict(row.get("metadata") or {}),
            )
            result = reward.score([sample])[0]
            if result.status != RewardStatus.OK or result.score != 1.0:
                why = result.message or f"the reference reply scores {result.score} ({result.status.value})"
                raise _Drop("unverifiable", f"reward {name!r} cannot verify gold {str(gold)[:80]!r}: {why}")
            checked = True
        return checked


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------


def apportion(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` rows in proportion to ``weights`` (largest remainder; ties to the earlier source).

    Raises:
        ValueError: If a weight is not positive or ``total`` is negative.
    """
    if total < 0 or not weights or any(not w > 0 for w in weights):
        raise ValueError(f"apportion needs positive weights and total >= 0, got {list(weights)}, {total}")
    s = float(sum(weights))
    exact = [w / s * total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def default_total(weights: Sequence[float], sizes: Sequence[int]) -> int:
    """The most rows a blend of these weights can have without repeating a row of any source."""
    s = float(sum(weights))
    total = min(int(n / (w / s) + 1e-9) for w, n in zip(weights, sizes, strict=True))
    while total > 0 and any(c > n for c, n in zip(apportion(weights, total), sizes, strict=True)):
        total -= 1
    return total


def sample_blend(
    pools: Sequence[Sequence[Any]], weights: Sequence[float], total: int, seed: int
) -> tuple[list[Any], list[int], list[int]]:
    """``(rows, drawn per source, repeated per source)``: ``total`` rows apportioned by ``weights``, each source's
    rows in seeded permutations (a new one only once it is exhausted), the whole shuffled with ``seed``.

    Raises:
        ValueError: If a source that must contribute rows has none.
    """
    counts = apportion(weights, total)
    picked: list[Any] = []
    repeated: list[int] = []
    for i, (pool, count) in enumerate(zip(pools, counts, strict=True)):
        if count and not pool:
            raise ValueError(f"source {i} has no rows but its weight asks for {count}")
        taken: list[Any] = []
        epoch = 0
        while len(taken) < count:
            order = list(range(len(pool)))
            random.Random(f"{seed}/source{i}/epoch{epoch}").shuffle(order)
            taken.extend(pool[j] for j in order[: count - len(taken)])
            epoch += 1
        picked.extend(taken)
        repeated.append(max(0, count - len(pool)))
    random.Random(f"{seed}/blend").shuffle(picked)
    return picked, counts, repeated


# ----------------------------------------------------------------------------------------------------------------
# Building blends
# ----------------------------------------------------------------------------------------------------------------


def source_domain(source: BlendSource) -> str:
    """The source's domain name: ``domain``, else its file / directory name without the suffix."""
    return source.domain or Path(source.path).stem


def _read(source: BlendSource, index: int) -> Iterator[RawRow]:
    try:
        yield from read_rows(source.path)
    except (OSError, KeyError, ImportError) as exc:
        raise BlendError(f"data.blend[{index}].path={source.path}: cannot be read: {exc}") from exc


def _prompt_rows_of(
    source: BlendSource, index: int, data: DataConfig, checker: GoldChecker, report: SourceReport
) -> list[dict[str, Any]]:
    from nemotron_plugins.data.sources import DataSourceError, _prompt_row

    wanted = set(data.splits)
    rows: list[dict[str, Any]] = []
    for raw in _read(source, index):
        if source.max_rows is not None and len(rows) >= source.max_rows:
            break
        if raw.row is None:
            report.read += 1
            report.drop(raw.line, "bad_row", raw.error or "undecodable")
            continue
        if wanted and raw.row.get("category") not in wanted:
            report.other_split += 1
            continue
        report.read += 1
        try:
            row = apply_template(raw.row, source.template, max_answer_words=source.max_answer_words)
            if source.reward is not None:
                row["reward"] = source.reward
            try:
                prompt = _prompt_row(RawRow(raw.line, row), source.path)
            except DataSourceError as exc:
                raise _Drop("bad_row", str(exc)) from exc
            if data.reasoning != "both" and prompt["reasoning"] != data.reasoning:
                report.read -= 1
                report.other_split += 1
                continue
            if not checker.check(prompt):
                report.unchecked += 1
        except _Drop as drop:
            report.drop(raw.line, drop.reason, drop.detail)
            continue
        prompt["domain"] = report.domain
        rows.append(prompt)
    report.kept = len(rows)
    return rows


def _finish(
    pools: list[list[Any]], data: DataConfig, seed: int, report: BlendReport, output_dir: str | os.PathLike[str] | None
) -> list[Any]:
    blend = data.blend or []
    weights = [float(s.weight) for s in blend]
    empty = [f"data.blend[{r.index}] ({r.path})" for r, pool in zip(report.sources, pools, strict=True) if not pool]
    if empty:
        details = "; ".join(
            f"data.blend[{r.index}]: read {r.read}, dropped {dict(r.dropped)}" for r in report.sources if r.kept == 0
        )
        raise BlendError(
            f"{', '.join(empty)}: no usable rows after the template and the verifiable filter ({details})"
        )
    total = (
        data.num_train_samples
        if data.num_train_samples is not None
        else default_total(weights, [len(p) for p in pools])
    )
    rows, drawn, repeated = sample_blend(pools, weights, total, seed)
    report.total = len(rows)
    for r, d, rep in zip(report.sources, drawn, repeated, strict=True):
        r.drawn, r.repeated = d, rep
    _publish(report, output_dir)
    return rows


def _publish(report: BlendReport, output_dir: str | os.PathLike[str] | None) -> None:
    """Print the report and write ``data_blend_report.json`` (rank 0 only: every rank builds the same blend)."""
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"[data] {report.format()}", flush=True)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "data_blend_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")


def _source_report(source: BlendSource, index: int) -> SourceReport:
    return SourceReport(
        index=index,
        domain=source_domain(source),
        path=str(source.path),
        template=source.template,
        weight=float(source.weight),
    )


def build_prompt_blend(
    data: DataConfig,
    *,
    rewards: Sequence[RewardSpec],
    seed: int,
    output_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[dict[str, Any]], BlendReport]:
    """The RL prompt rows of ``data.blend`` (normalised like ``data.path``'s, plus ``domain``) and the report.

    Args:
        data: The run's data block (``blend``, ``splits``, ``reasoning``, ``num_train_samples``).
        rewards: The recipe's rewards (the verifiable filter scores each row's gold with them).
        seed: The run seed (sampling and order).
        output_dir: Where ``data_blend_report.json`` is written (``None``: not written).

    Raises:
        BlendError: Naming ``data.blend[i]`` when a source cannot be read or keeps no rows.
    """
    if not data.blend:
        raise BlendError("data.blend is empty")
    report = BlendReport(seed=seed)
    checker = GoldChecker(rewards)
    pools: list[list[Any]] = []
    try:
        for i, source in enumerate(data.blend):
            source_report = _source_report(source, i)
            report.sources.append(source_report)
            pools.append(_prompt_rows_of(source, i, data, checker, source_report))
    finally:
        checker.close()
    return _finish(pools, data, seed, report, output_dir), report


def build_sft_blend(
    data: DataConfig, *, seed: int, output_dir: str | os.PathLike[str] | None = None
) -> tuple[list[RawRow], BlendReport]:
    """The SFT rows of ``data.blend`` (``as_is`` sources; ``data.splits`` applied, undecodable lines dropped and
    counted) sampled by weight, and the report. The SFT example builder still checks every row's schema.

    Raises:
        BlendError: Naming ``data.blend[i]`` for a templated source (SFT targets are not rewritten) or a source
            without rows.
    """
    if not data.blend:
        raise BlendError("data.blend is empty")
    report = BlendReport(seed=seed)
    pools: list[list[Any]] = []
    wanted = set(data.splits)
    for i, source in enumerate(data.blend):
        if source.template != "as_is":
            raise BlendError(
                f"data.blend[{i}].template={source.template!r}: SFT rows keep their prompt and target (use 'as_is')"
            )
        r = _source_report(source, i)
        report.sources.append(r)
        pool: list[RawRow] = []
        for raw in _read(source, i):
            if source.max_rows is not None and len(pool) >= source.max_rows:
                break
            if raw.row is not None and wanted and raw.row.get("category") not in wanted:
                r.other_split += 1
                continue
            r.read += 1
            if raw.row is None:
                r.drop(raw.line, "bad_row", raw.error or "undecodable")
                continue
            pool.append(raw)
        r.kept = len(pool)
        pools.append(pool)
    return _finish(pools, data, seed, report, output_dir), report
