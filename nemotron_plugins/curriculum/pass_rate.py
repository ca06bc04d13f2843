"""Pass-rate estimation: k completions per prompt from a generator, scored by a reward, written back to JSONL.

LN-Ultra's curriculum sampled 8 responses per prompt from a weaker model; the fraction that pass is the prompt's
pass rate. :func:`estimate_pass_rates` reads a JSONL dataset, asks any :class:`CompletionGenerator` for ``k``
completions per prompt, scores them with a reward (``nemotron_plugins.rewards``), and writes every input record back
with four more fields:

=====================  ================================================================================
``pass_rate``          ``num_passed / num_samples``
``num_passed``         completions whose reward score is ``>= pass_threshold`` (and whose status is OK)
``num_samples``        ``k``
``num_reward_errors``  completions the reward could not score (status not OK; counted as not passing)
=====================  ================================================================================

The output file doubles as a journal: records are appended chunk by chunk and flushed to disk, so after an
interruption the same call skips every prompt already in the output (matched by id) and goes on. Records without an
id get their 1-based line number as id (written into the output) so a resumed run can recognise them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from nemotron_plugins.curriculum.records import CurriculumInputError, check_id, iter_jsonl

PromptType = str | list[dict[str, Any]]


@runtime_checkable
class CompletionGenerator(Protocol):
    """Anything that can produce ``n`` completions for each of a batch of prompts.

    The RL rollout engines, :class:`~nemotron_plugins.curriculum.openai_generator.OpenAICompatibleGenerator` and
    test fakes all satisfy it structurally.
    """

    def generate(self, prompts: Sequence[PromptType], n: int) -> list[list[str]]:
        """Return, for each prompt (text or chat messages), a list of ``n`` completion texts."""
        ...


class GenerationError(RuntimeError):
    """A generator failed or returned something other than ``n`` strings per prompt."""


@dataclass(kw_only=True, slots=True)
class PassRateConfig:
    """How pass rates are estimated."""

    num_samples: int = 8
    """Completions per prompt (k); LN-Ultra used 8."""
    pass_threshold: float = 1.0
    """A completion passes when its reward score is at least this (binary rewards: 1.0)."""
    id_field: str = "id"
    """Field holding the prompt id (the 1-based line number is used where it is missing)."""
    prompt_field: str = "prompt"
    """Field holding the prompt: a string or a list of chat messages ``{"role", "content"}``."""
    ground_truth_field: str = "ground_truth"
    """Field holding the reference answer handed to the reward (may be absent for format-only rewards)."""
    chunk_size: int = 16
    """Prompts per ``generate`` call (and per journal write)."""
    show_progress: bool = True
    """Show a tqdm progress bar on stderr."""
    reward_workers: int = 2
    """Worker processes that score the completions: the reward runs through
    :func:`~nemotron_plugins.rewards.pool.bounded_reward`, so one pathological completion costs one sample's
    ``reward_timeout_s``, never the run (server-backed rewards keep their own deadlines)."""
    reward_timeout_s: float = 10.0
    """Per-completion time bound in the reward workers (seconds)."""

    def validate(self) -> None:
        """Check the fields.

        Raises:
            CurriculumInputError: Naming the bad field.
        """
        for name in ("num_samples", "chunk_size", "reward_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CurriculumInputError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.pass_threshold, bool) or not isinstance(self.pass_threshold, int | float):
            raise CurriculumInputError(f"pass_threshold must be a number, got {self.pass_threshold!r}")
        timeout = self.reward_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise CurriculumInputError(f"reward_timeout_s must be a positive number of seconds, got {timeout!r}")


@dataclass(frozen=True, slots=True)
class EstimateSummary:
    """What a call to :func:`estimate_pass_rates` did."""

    total: int
    """Prompts in the input."""
    resumed: int
    """Prompts found already done in the output (skipped)."""
    estimated: int
    """Prompts estimated by this call."""
    reward_errors: int
    """Completions (this call) the reward could not score."""
    mean_pass_rate: float
    """Mean pass rate over all prompts in the output."""


@dataclass(slots=True)
class _Prompt:
    line_number: int
    record: dict[str, Any]
    prompt_id: Any
    prompt: PromptType
    ground_truth: Any


def _read_prompts(path: Path, config: PassRateConfig) -> list[_Prompt]:
    prompts: list[_Prompt] = []
    seen: dict[Any, int] = {}
    for line_number, obj in iter_jsonl(path):
        where = f"{path} line {line_number}"
        if config.id_field in obj:
            prompt_id = check_id(obj[config.id_field], where=where, field=config.id_field)
        else:
            prompt_id = line_number
            obj = {config.id_field: prompt_id, **obj}
        if prompt_id in seen:
            raise CurriculumInputError(f"{where}: duplicate id {prompt_id!r} (first seen on line {seen[prompt_id]})")
        seen[prompt_id] = line_number
        prompt = obj.get(config.prompt_field)
        if isinstance(prompt, list):
            if not prompt or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
                raise CurriculumInputError(
                    f"{where}: field {config.prompt_field!r} is a list but not a non-empty list of chat messages "
                    '{"role": ..., "content": ...}'
                )
        elif not isinstance(prompt, str) or not prompt:
            raise CurriculumInputError(
                f"{where}: field {config.prompt_field!r} must be a non-empty string or a list of chat messages, "
                f"got {prompt!r:.80}"
            )
        prompts.append(_Prompt(line_number, obj, prompt_id, prompt, obj.get(config.ground_truth_field)))
    return prompts


def _read_journal(path: Path, config: PassRateConfig) -> dict[Any, float]:
    """Ids (and pass rates) already in the output; cut off a torn last line left by a crash."""
    done: dict[Any, float] = {}
    if not path.exists():
        return done
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a partially written last line: drop it, it will be redone
        with path.open("r+b") as handle:
            handle.truncate(end)
    for line_number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            done[obj[config.id_field]] = float(obj["pass_rate"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CurriculumInputError(
                f"{path} line {line_number}: cannot resume from this output file: not a record written by the "
                f"estimator ({type(exc).__name__}: {exc}); remove it or pick another output path"
            ) from None
    return done


def _chunks(items: list[_Prompt], size: int) -> Iterator[list[_Prompt]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_completions(completions: Any, chunk: list[_Prompt], n: int) -> list[list[str]]:
    if not isinstance(completions, list) or len(completions) != len(chunk):
        got = len(completions) if isinstance(completions, list) else type(completions).__name__
        raise GenerationError(f"generator returned {got} completion lists for {len(chunk)} prompts")
    for item, texts in zip(chunk, completions, strict=True):
        if not isinstance(texts, list) or len(texts) != n or not all(isinstance(t, str) for t in texts):
            raise GenerationError(
                f"generator must return {n} strings for prompt id {item.prompt_id!r} (line {item.line_number}), "
                f"got {texts!r:.120}"
            )
    return completions


def score_completions(
    chunk: Sequence[Mapping[str, Any]],
    completions: Sequence[Sequence[str]],
    reward: Any,
    config: PassRateConfig,
) -> list[dict[str, int | float]]:
    """Score each prompt's completions in one reward call and count the passes.

    Args:
        chunk: The prompt records (with ``config.prompt_field`` and optionally ``config.ground_truth_field``).
        completions: ``len(chunk)`` lists of completions.
        reward: A built ``nemotron_plugins.rewards.base.Reward``.
        config: Threshold and field names.

    Returns:
        Per prompt: ``pass_rate``, ``num_passed``, ``num_samples`` and ``num_reward_errors``.
    """
    from nemotron_plugins.rewards.base import RewardSample

    fields = {config.prompt_field, config.ground_truth_field}
    samples = []
    for record, texts in zip(chunk, completions, strict=True):
        metadata = {k: v for k, v in record.items() if k not in fields}
        for text in texts:
            samples.append(
                RewardSample(
                    completion=text,
                    ground_truth=record.get(config.ground_truth_field),
                    prompt=record.get(config.prompt_field),
                    metadata=metadata,
                )
            )
    results = reward.score(samples)
    if len(results) != len(samples):
        raise GenerationError(f"reward {reward!r} returned {len(results)} results for {len(samples)} samples")
    out: list[dict[str, int | float]] = []
    position = 0
    for texts in completions:
        group = results[position : position + len(texts)]
        position += len(texts)
        passed = sum(1 for r in group if r.ok and r.score >= config.pass_threshold)
        errors = sum(1 for r in group if not r.ok)
        out.append(
            {
                "pass_rate": passed / len(texts),
                "num_passed": passed,
                "num_samples": len(texts),
                "num_reward_errors": errors,
            }
        )
    return out


def estimate_pass_rates(
    input_path: str | Path,
    output_path: str | Path,
    generator: CompletionGenerator,
    reward: Any,
    config: PassRateConfig | None = None,
) -> EstimateSummary:
    """Estimate the pass rate of every prompt of a JSONL file; resumable.

    Args:
        input_path: JSONL prompts (``id``, ``prompt``, ``ground_truth`` and any other fields).
        output_path: JSONL written with every input record plus the pass-rate fields, in input order. If it
            already holds records from an interrupted run, those prompts are skipped.
        generator: Produces ``k`` completions per prompt.
        reward: A reward name or spec for ``nemotron_plugins.rewards.base.build_reward``, or a built ``Reward``.
            Either way it scores through :func:`~nemotron_plugins.rewards.pool.bounded_reward` (a worker pool with a
            per-sample time and memory bound; a composition that holds a server-backed reward has its other parts
            pooled in place).
        config: Sample count, threshold, field names, chunking, reward workers.

    Returns:
        A summary of the run.

    Raises:
        CurriculumInputError: On a bad input line (naming it), an output file that is not an estimator journal, or
            an output that holds ids missing from the input.
        GenerationError: If the generator breaks its contract.
    """
    from nemotron_plugins.rewards.base import Reward, build_reward
    from nemotron_plugins.rewards.pool import bounded_reward

    config = config or PassRateConfig()
    config.validate()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise CurriculumInputError(f"output {str(output_path)!r} is the input file; write to another path")
    prompts = _read_prompts(input_path, config)
    done = _read_journal(output_path, config)
    known = {p.prompt_id for p in prompts}
    stray = [i for i in done if i not in known]
    if stray:
        raise CurriculumInputError(
            f"{output_path} holds {len(stray)} id(s) not in {input_path} (e.g. {stray[0]!r}); it belongs to another "
            "dataset: remove it or pick another output path"
        )
    todo = [p for p in prompts if p.prompt_id not in done]
    built = reward if isinstance(reward, Reward) else build_reward(reward)
    scorer = bounded_reward(built, workers=config.reward_workers, timeout_s=config.reward_timeout_s)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    rates = list(done.values())
    try:
        errors = _run_chunks(todo, len(prompts), len(done), output_path, generator, scorer, config, rates)
    finally:  # release the workers / connections made here
        if scorer is not reward:
            scorer.close()
        if built is not reward and built is not scorer:
            built.close()
    return EstimateSummary(
        total=len(prompts),
        resumed=len(done),
        estimated=len(todo),
        reward_errors=errors,
        mean_pass_rate=sum(rates) / len(rates) if rates else 0.0,
    )


def _run_chunks(
    todo: list[_Prompt],
    total: int,
    already: int,
    output_path: Path,
    generator: CompletionGenerator,
    reward: Any,
    config: PassRateConfig,
    rates: list[float],
) -> int:
    """Generate, score and journal ``todo`` chunk by chunk; returns the reward-error count."""
    from tqdm.auto import tqdm

    errors = 0
    with (
        output_path.open("a", encoding="utf-8") as journal,
        tqdm(total=total, initial=already, desc="pass rates", unit="prompt", disable=not config.show_progress) as bar,
    ):
        for chunk in _chunks(todo, config.chunk_size):
            completions = generator.generate([p.prompt for p in chunk], config.num_samples)
            completions = _check_completions(completions, chunk, config.num_samples)
            stats = score_completions([p.record for p in chunk], completions, reward, config)
            lines = []
            for item, stat in zip(chunk, stats, strict=True):
                lines.append(json.dumps({**item.record, **stat}, ensure_ascii=False) + "\n")
                rates.append(float(stat["pass_rate"]))
                errors += int(stat["num_reward_errors"])
            journal.write("".join(lines))
            journal.flush()
            os.fsync(journal.fileno())
            bar.update(len(chunk))
    return errors
