"""Where a run's rows come from: Post-Training-Dataset files, or the generated arithmetic task when chosen.

The run config's ``data`` block decides (``data.dataset``): ``post_training`` reads ``data.path`` (a JSONL / parquet
file, a directory of them, or a ``datasets`` directory saved to disk) through :func:`~nemotron_plugins.data.rows.
read_rows`, keeps the categories in ``data.splits`` and counts what it drops; ``synthetic_addition`` writes the tiny
recipes' task into ``<output_dir>/data`` and reads it back in the same format. Nothing falls back from one to the
other.

RL prompt rows carry their prompt (``messages``, or the Post-Training ``input`` + ``system_prompt``), their
``ground_truth`` and optionally which reward scores them (a ``reward`` column naming one of the recipe's rewards);
:func:`load_prompt_rows` normalises them to ``{"id", "messages", "ground_truth", "reasoning", "reward"?, "tools"?}``
(``tools``: the row's JSON-schema tools, which the chat template renders into the system turn).

``data.blend`` (instead of ``data.path``) mixes several weighted sources with MCQ / open-ended templates, filtered to
verifiable answers (:mod:`nemotron_plugins.data.blend`), for RL prompts and SFT rows.

Public API: :func:`prepare_synthetic_data`, :func:`sft_row_source`, :func:`sft_training_rows`, :func:`iter_training_rows`,
:func:`load_prompt_rows`, :class:`DataSourceError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nemotron_plugins.data.rows import RawRow, read_rows

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import DataConfig, RewardSpec


class DataSourceError(ValueError):
    """Rows cannot be read as configured; the message names the field, file and line."""


SYNTHETIC = "synthetic_addition"
POST_TRAINING = "post_training"


def synthetic_data_dir(output_dir: str | os.PathLike[str]) -> Path:
    """Where ``synthetic_addition`` writes its files: ``<output_dir>/data``."""
    return Path(output_dir) / "data"


def prepare_synthetic_data(data: DataConfig, output_dir: str | os.PathLike[str]) -> Path:
    """Write the synthetic task of ``data.synthetic`` into ``<output_dir>/data`` (byte-identical for the same
    settings, so every rank or a rerun may call it) and return the directory."""
    from nemotron_plugins.data.synthetic import ArithmeticConfig, write_synthetic_dataset

    if data.dataset != SYNTHETIC or data.synthetic is None:
        raise DataSourceError(f"data.dataset={data.dataset!r}: not the synthetic task (data.synthetic is required)")
    s = data.synthetic
    out = synthetic_data_dir(output_dir)
    write_synthetic_dataset(
        out,
        s.problems,
        s.heldout_problems,
        s.seed,
        config=ArithmeticConfig(
            min_value=s.min_value,
            max_value=s.max_value,
            corrupt_fraction=s.corrupt_fraction,
            reversed_answer_fraction=s.reversed_answer_fraction,
        ),
    )
    return out


def sft_row_source(data: DataConfig, output_dir: str | os.PathLike[str]) -> Path:
    """The file or directory of the SFT training rows."""
    if data.dataset == SYNTHETIC:
        return synthetic_data_dir(output_dir) / "sft_train.jsonl"
    if data.dataset != POST_TRAINING:
        raise DataSourceError(f"data.dataset={data.dataset!r}: use {POST_TRAINING!r} or {SYNTHETIC!r}")
    if not data.path:
        raise DataSourceError(missing_path_message(data))
    return Path(data.path)


def sft_training_rows(
    data: DataConfig, output_dir: str | os.PathLike[str], *, seed: int
) -> tuple[Iterable[RawRow], str]:
    """``(SFT rows, where they come from)``: ``data.blend`` sampled by weight from ``seed`` (its report printed and
    written to ``output_dir``), else the rows of :func:`sft_row_source` in ``data.splits``."""
    if data.blend is not None:
        from nemotron_plugins.data.blend import build_sft_blend

        rows, report = build_sft_blend(data, seed=seed, output_dir=output_dir)
        return rows, f"data.blend ({len(report.sources)} sources)"
    source = sft_row_source(data, output_dir)
    return iter_training_rows(source, data.splits), str(source)


def missing_path_message(data: DataConfig) -> str:
    """The error for a ``post_training`` recipe without ``data.path``: what to download and how to pass it."""
    where = data.hub_id or "your Post-Training-Dataset-format rows"
    return (
        f"data.path is not set: this recipe trains on {where}; download it once (e.g. `huggingface-cli download "
        f"--repo-type dataset {data.hub_id or 'ORG/DATASET'} --local-dir DIR`) and pass data.path=DIR/<file or "
        "folder> (JSONL, parquet, or a datasets save_to_disk directory)"
    )


def iter_training_rows(source: str | os.PathLike[str], splits: Sequence[str]) -> Iterator[RawRow]:
    """Rows of ``source`` whose ``category`` is in ``splits`` (all rows when ``splits`` is empty); undecodable rows
    are passed through so the example builder counts them."""
    wanted = set(splits)
    for raw in read_rows(source):
        if wanted and raw.row is not None and raw.row.get("category") not in wanted:
            continue
        yield raw


def _prompt_row(raw: RawRow, where: str) -> dict[str, Any]:
    from nemotron_plugins.chat.toggle import reasoning_mode_of
    from nemotron_plugins.data.sft import prompt_messages, row_tools

    row = raw.row
    if row is None:
        raise DataSourceError(f"{where}:{raw.line}: {raw.error}")
    if "ground_truth" not in row or row["ground_truth"] is None:
        raise DataSourceError(f"{where}:{raw.line}: an RL prompt row needs 'ground_truth'")
    if "messages" in row:
        messages = [dict(m) for m in row["messages"]]
    elif "input" in row:
        messages = prompt_messages(row)
    else:
        raise DataSourceError(f"{where}:{raw.line}: an RL prompt row needs 'messages' (or 'input')")
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    reasoning = row.get("reasoning") or reasoning_mode_of(str(system)) or "on"
    out: dict[str, Any] = {
        "id": row.get("id", f"{Path(where).name}:{raw.line}"),
        "messages": messages,
        "ground_truth": row["ground_truth"],
        "reasoning": reasoning,
    }
    if row.get("reward") is not None:
        out["reward"] = str(row["reward"])
    try:
        tools = row_tools(row)
    except ValueError as exc:
        raise DataSourceError(f"{where}:{raw.line}: {exc}") from None
    if tools is not None:
        out["tools"] = tools
    for key in ("category", "metadata"):
        if key in row:
            out[key] = row[key]
    return out


def read_prompt_rows(
    source: str | os.PathLike[str], *, splits: Sequence[str], reasoning: str, limit: int | None
) -> list[dict[str, Any]]:
    """Normalised RL prompt rows of ``source`` (categories ``splits``, reasoning mode ``reasoning`` or both)."""
    rows: list[dict[str, Any]] = []
    for raw in iter_training_rows(source, splits):
        row = _prompt_row(raw, str(source))
        if reasoning != "both" and row["reasoning"] != reasoning:
            continue
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def load_prompt_rows(
    data: DataConfig,
    output_dir: str | os.PathLike[str],
    *,
    num_heldout: int,
    seed: int | None = None,
    rewards: Sequence[RewardSpec] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(training prompts, held-out prompts)`` for RL (synthetic files must be written already).

    With ``data.blend`` the training prompts are the blend (:func:`~nemotron_plugins.data.blend.build_prompt_blend`:
    templates, the verifiable filter with ``rewards``, weighted sampling from ``seed``; its report is printed and
    written to ``output_dir``); held-out prompts still come from ``data.eval_path``.

    Raises:
        DataSourceError: Naming the field, file and line of what is missing or malformed.
    """
    if data.blend is not None:
        from nemotron_plugins.data.blend import BlendError, build_prompt_blend

        if seed is None or rewards is None:
            raise DataSourceError("data.blend: the run's seed and rewards are needed to build the blend")
        try:
            train, _ = build_prompt_blend(data, rewards=rewards, seed=seed, output_dir=output_dir)
        except BlendError as exc:
            raise DataSourceError(str(exc)) from exc
        heldout: list[dict[str, Any]] = []
        if num_heldout and data.eval_path:
            heldout = read_prompt_rows(data.eval_path, splits=data.splits, reasoning=data.reasoning, limit=num_heldout)
        return train, heldout
    if data.dataset == SYNTHETIC:
        base = synthetic_data_dir(output_dir)
        train_path, heldout_path = base / "rl_train.jsonl", base / "rl_heldout.jsonl"
    elif data.dataset == POST_TRAINING:
        if not data.path:
            raise DataSourceError(missing_path_message(data))
        train_path = Path(data.path)
        heldout_path = Path(data.eval_path) if data.eval_path else None
    else:
        raise DataSourceError(f"data.dataset={data.dataset!r}: use {POST_TRAINING!r} or {SYNTHETIC!r}")
    train = read_prompt_rows(train_path, splits=data.splits, reasoning=data.reasoning, limit=data.num_train_samples)
    heldout: list[dict[str, Any]] = []
    if num_heldout and heldout_path is not None:
        heldout = read_prompt_rows(heldout_path, splits=data.splits, reasoning=data.reasoning, limit=num_heldout)
    return train, heldout


def check_reward_routing(rows: Sequence[Mapping[str, Any]], reward_names: Sequence[str], where: str) -> None:
    """Every row's ``reward`` column must name one of the recipe's rewards.

    Raises:
        DataSourceError: Naming the first row that names another reward.
    """
    names = set(reward_names)
    for i, row in enumerate(rows):
        reward = row.get("reward")
        if reward is not None and reward not in names:
            raise DataSourceError(
                f"{where}: row {row.get('id', i)} asks for reward {reward!r}, which the recipe's rewards "
                f"({sorted(names)}) do not include; add it to rewards or drop those rows"
            )
