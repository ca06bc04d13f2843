"""Reading rows in the Llama-Nemotron-Post-Training-Dataset schema from local files.

Public API::

    read_rows(path, *, split="train", cache_dir=None) -> Iterator[RawRow]
    RawRow(line: int, row: dict | None, error: str | None)
    POST_TRAINING_FIELDS

A row has ``input`` (list of chat messages), ``output`` (the target; ``<think>...</think>answer`` when reasoning is
on), ``reasoning`` (``"on"``/``"off"``), ``system_prompt`` (``detailed thinking on|off``), and the metadata fields
``category``, ``license``, ``generator``, ``used_in_training``, ``version``.

Supported sources (never downloads):

- a ``.jsonl`` / ``.json`` file with one JSON object per line: read here, so a line that is not JSON becomes a
  :class:`RawRow` with an ``error`` (counted as ``bad_json`` by the SFT builder) and line numbers are file lines;
- a directory written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
- a directory of ``.jsonl`` files: read here file by file in name order (``line`` is the line in its file);
- a ``.parquet`` file or a directory of ``.parquet`` files, through ``datasets.load_dataset`` (``line`` is then the
  1-based row index).

The ``datasets`` package is needed only for the last two (it comes with ``trl`` / the ``test`` extra).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POST_TRAINING_FIELDS: tuple[str, ...] = (
    "input",
    "output",
    "reasoning",
    "system_prompt",
    "category",
    "license",
    "generator",
    "used_in_training",
    "version",
)
"""Columns of nvidia/Llama-Nemotron-Post-Training-Dataset."""

REQUIRED_FIELDS: tuple[str, ...] = ("input", "output", "reasoning", "system_prompt")
"""Fields an SFT row must have."""


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row read from a source, with where it came from."""

    line: int
    """1-based line number (JSONL) or row index (Hugging Face datasets)."""
    row: dict[str, Any] | None
    """The decoded row, or ``None`` when it could not be decoded."""
    error: str | None = None
    """Why the row could not be decoded (``None`` when it was)."""


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    with path.open(encoding="utf-8") as handle:
        for line_no, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RawRow(line_no, None, f"not valid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(value, dict):
                yield RawRow(line_no, None, f"expected a JSON object, got {type(value).__name__}")
                continue
            yield RawRow(line_no, value)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is installed with the test extra
        raise ImportError(
            "reading Hugging Face datasets (save_to_disk directories, parquet) needs the 'datasets' package; "
            "install it with `pip install datasets` or use JSONL files"
        ) from exc
    return datasets


def _iter_dataset(dataset: Any) -> Iterator[RawRow]:
    for index, row in enumerate(dataset, start=1):
        yield RawRow(index, dict(row))


def _select_split(loaded: Any, split: str, path: Path) -> Any:
    if hasattr(loaded, "keys") and not hasattr(loaded, "features"):  # a DatasetDict
        if split not in loaded:
            raise KeyError(f"{path}: no split {split!r}; splits: {', '.join(sorted(loaded.keys()))}")
        return loaded[split]
    return loaded


def read_rows(path: str | os.PathLike[str], *, split: str = "train", cache_dir: str | None = None) -> Iterator[RawRow]:
    """Yield the rows of a local Post-Training-Dataset source.

    Args:
        path: A ``.jsonl``/``.json`` file, a ``save_to_disk`` directory, a ``.parquet`` file, or a directory of
            ``.parquet`` / ``.jsonl`` files.
        split: The split to read from a ``DatasetDict`` or a ``load_dataset`` source.
        cache_dir: Cache directory for ``datasets.load_dataset`` (its default cache when ``None``).

    Yields:
        :class:`RawRow` objects in source order.

    Raises:
        FileNotFoundError: If ``path`` does not exist or holds nothing readable.
        KeyError: If ``split`` is not in the source.
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"data source {str(source)!r} does not exist")
    if source.is_file() and source.suffix in {".jsonl", ".json"}:
        yield from _read_jsonl(source)
        return
    if source.is_dir() and any((source / marker).exists() for marker in ("dataset_info.json", "dataset_dict.json")):
        datasets = _import_datasets()
        yield from _iter_dataset(_select_split(datasets.load_from_disk(str(source)), split, source))
        return
    if source.is_file() and source.suffix == ".parquet":
        files, builder = [str(source)], "parquet"
    elif source.is_dir():
        parquet = sorted(str(p) for p in source.glob("*.parquet"))
        jsonl = sorted(str(p) for p in source.glob("*.jsonl"))
        if jsonl and not parquet:
            # Read here, file by file, so a bad line is a counted bad row (not an error for the whole directory).
            for file in jsonl:
                yield from _read_jsonl(Path(file))
            return
        files, builder = (parquet, "parquet") if parquet else (jsonl, "json")
        if not files:
            raise FileNotFoundError(
                f"{source}: no save_to_disk dataset (dataset_info.json), .parquet or .jsonl files found"
            )
    else:
        raise FileNotFoundError(f"{source}: unsupported data file; use .jsonl, .json, .parquet or a dataset directory")
    datasets = _import_datasets()
    loaded = datasets.load_dataset(builder, data_files={split: files}, cache_dir=cache_dir)
    yield from _iter_dataset(_select_split(loaded, split, source))
