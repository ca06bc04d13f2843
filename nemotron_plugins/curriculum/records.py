"""Reading and validating JSONL prompt files that carry a ``pass_rate`` per prompt.

Every error names the file, the 1-based line number and the field, and says what would be valid, e.g.::

    data.jsonl line 7: field 'pass_rate' is NaN; expected a number in [0, 1]

Lines that are empty (or whitespace only) are skipped; everything else must be a JSON object.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class CurriculumInputError(ValueError):
    """Bad curriculum input (a malformed line, a missing or invalid field, a duplicate id, an impossible size)."""


@dataclass(frozen=True, slots=True)
class PassRateTable:
    """Prompt ids and their pass rates, in file order.

    Attributes:
        ids: One id per prompt (strings or integers, as written in the file).
        pass_rates: ``float64`` array, one value in [0, 1] per prompt.
        line_numbers: 1-based line numbers of the prompts in the source file.
    """

    ids: list[Any]
    pass_rates: np.ndarray
    line_numbers: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-empty line of a JSONL file.

    Args:
        path: The file to read.

    Yields:
        The 1-based line number and the decoded JSON object.

    Raises:
        CurriculumInputError: If the file is missing, a line is not valid JSON, or a line is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise CurriculumInputError(f"input file {str(path)!r} does not exist or is not a file")
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CurriculumInputError(f"{path} line {line_number}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise CurriculumInputError(
                    f"{path} line {line_number}: expected a JSON object, got {type(obj).__name__}"
                )
            yield line_number, obj


def parse_pass_rate(value: Any, *, where: str, field: str = "pass_rate") -> float:
    """Validate one pass-rate value.

    Args:
        value: The raw JSON value.
        where: Location prefix for the error message (e.g. ``"data.jsonl line 3"``).
        field: The field name used in the message.

    Returns:
        The value as a float in [0, 1].

    Raises:
        CurriculumInputError: If the value is missing, not a number (booleans and strings are rejected), NaN or
            infinite, or outside [0, 1].
    """
    if value is None:
        raise CurriculumInputError(f"{where}: field {field!r} is missing or null; expected a number in [0, 1]")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CurriculumInputError(
            f"{where}: field {field!r} must be a number in [0, 1], got {type(value).__name__} {value!r}"
        )
    number = float(value)
    if math.isnan(number):
        raise CurriculumInputError(f"{where}: field {field!r} is NaN; expected a number in [0, 1]")
    if not 0.0 <= number <= 1.0:
        raise CurriculumInputError(f"{where}: field {field!r} is {value!r}, outside [0, 1]")
    return number


def check_id(value: Any, *, where: str, field: str = "id") -> Any:
    """Validate one prompt id: a non-empty string or an integer.

    Raises:
        CurriculumInputError: If the id is missing or of another type.
    """
    if value is None:
        raise CurriculumInputError(f"{where}: field {field!r} is missing; every line needs a string or integer id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise CurriculumInputError(f"{where}: field {field!r} must be a non-empty string or an integer, got {value!r}")
    return value


def load_pass_rates(path: str | Path, *, id_field: str = "id", pass_rate_field: str = "pass_rate") -> PassRateTable:
    """Read a JSONL file whose lines each carry an id and a pass rate.

    Args:
        path: The JSONL file.
        id_field: Name of the id field.
        pass_rate_field: Name of the pass-rate field.

    Returns:
        The ids, pass rates and line numbers in file order.

    Raises:
        CurriculumInputError: On the first bad line (missing / non-numeric / NaN / out-of-range pass rate, missing
            id, duplicate id, malformed JSON) naming the line, or if the file holds no prompts.
    """
    ids: list[Any] = []
    rates: list[float] = []
    lines: list[int] = []
    first_line_of: dict[Any, int] = {}
    for line_number, obj in iter_jsonl(path):
        where = f"{path} line {line_number}"
        prompt_id = check_id(obj.get(id_field), where=where, field=id_field)
        if pass_rate_field not in obj:
            raise CurriculumInputError(f"{where}: field {pass_rate_field!r} is missing; expected a number in [0, 1]")
        rate = parse_pass_rate(obj[pass_rate_field], where=where, field=pass_rate_field)
        if prompt_id in first_line_of:
            raise CurriculumInputError(
                f"{where}: duplicate id {prompt_id!r} (first seen on line {first_line_of[prompt_id]}); ids must be unique"
            )
        first_line_of[prompt_id] = line_number
        ids.append(prompt_id)
        rates.append(rate)
        lines.append(line_number)
    if not ids:
        raise CurriculumInputError(f"{path}: no prompts found (the file is empty)")
    return PassRateTable(ids=ids, pass_rates=np.asarray(rates, dtype=np.float64), line_numbers=lines)


def validate_pass_rate_array(pass_rates: Any) -> np.ndarray:
    """Turn a sequence of pass rates (one per prompt index) into a checked ``float64`` array.

    Args:
        pass_rates: A sequence or array of numbers in [0, 1].

    Returns:
        A 1-D ``float64`` array.

    Raises:
        CurriculumInputError: If the input is not 1-D, empty, or holds NaN / out-of-range values; the message names
            the first bad index.
    """
    try:
        array = np.asarray(pass_rates, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CurriculumInputError(f"pass_rates must be a sequence of numbers in [0, 1]: {exc}") from None
    if array.ndim != 1:
        raise CurriculumInputError(f"pass_rates must be one-dimensional (one per prompt), got shape {array.shape}")
    if array.size == 0:
        raise CurriculumInputError("pass_rates is empty; the sampler needs at least one prompt")
    bad = ~((array >= 0.0) & (array <= 1.0))  # NaN compares false, so it is caught here too
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise CurriculumInputError(
            f"pass_rates[{index}] is {float(array[index])!r}; every pass rate must be a number in [0, 1] "
            f"({int(bad.sum())} bad value(s) in all)"
        )
    return array
