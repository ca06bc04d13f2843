"""Pass-rate filtering: drop prompts the model already solves (LN-Ultra drops pass rate >= 0.75).

A prompt is kept when ``min_pass_rate <= pass_rate < max_pass_rate`` (half-open). With pass rates from ``k``
samples, ``min_pass_rate = 1 / k`` also drops prompts no sample solved.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nemotron_plugins.curriculum.planning import assign_bins, bin_edges
from nemotron_plugins.curriculum.records import CurriculumInputError, check_id, iter_jsonl, parse_pass_rate


@dataclass(kw_only=True, slots=True)
class FilterConfig:
    """Which prompts to keep."""

    max_pass_rate: float = 0.75
    """Drop prompts with pass rate at or above this (the paper's 0.75); 1.0 drops only the always-solved ones and a
    value above 1 drops none."""
    min_pass_rate: float | None = None
    """Drop prompts with pass rate below this; ``None`` keeps the hardest prompts too."""
    num_bins: int = 10
    """Equal-width pass-rate bins over [0, 1] used in the report."""

    def validate(self) -> None:
        """Check the fields.

        Raises:
            CurriculumInputError: Naming the bad field.
        """
        if isinstance(self.max_pass_rate, bool) or not isinstance(self.max_pass_rate, int | float):
            raise CurriculumInputError(f"max_pass_rate must be a number, got {self.max_pass_rate!r}")
        if not 0.0 < self.max_pass_rate:
            raise CurriculumInputError(f"max_pass_rate must be > 0 (it is exclusive), got {self.max_pass_rate!r}")
        if self.min_pass_rate is not None:
            if isinstance(self.min_pass_rate, bool) or not isinstance(self.min_pass_rate, int | float):
                raise CurriculumInputError(f"min_pass_rate must be None or a number, got {self.min_pass_rate!r}")
            if not 0.0 <= self.min_pass_rate < self.max_pass_rate:
                raise CurriculumInputError(
                    f"min_pass_rate must be in [0, max_pass_rate={self.max_pass_rate}), got {self.min_pass_rate!r}"
                )
        if isinstance(self.num_bins, bool) or not isinstance(self.num_bins, int) or self.num_bins < 1:
            raise CurriculumInputError(f"num_bins must be an integer >= 1, got {self.num_bins!r}")


@dataclass(frozen=True, slots=True)
class BinReport:
    """Counts for one pass-rate bin ``[low, high)`` (the last bin includes 1.0)."""

    low: float
    high: float
    total: int
    kept: int
    dropped_high: int
    dropped_low: int

    @property
    def dropped(self) -> int:
        """Prompts dropped from this bin for either reason."""
        return self.dropped_high + self.dropped_low


@dataclass(frozen=True, slots=True)
class FilterReport:
    """What filtering did, overall and per bin."""

    total: int
    kept: int
    dropped_high: int
    dropped_low: int
    bins: list[BinReport]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped_high": self.dropped_high,
            "dropped_low": self.dropped_low,
            "bins": [
                {
                    "low": b.low,
                    "high": b.high,
                    "total": b.total,
                    "kept": b.kept,
                    "dropped_high": b.dropped_high,
                    "dropped_low": b.dropped_low,
                }
                for b in self.bins
            ],
        }

    def format_table(self) -> str:
        """A plain-text table of the per-bin counts."""
        lines = [f"{'pass rate':<14}{'total':>10}{'kept':>10}{'dropped':>10}", "-" * 44]
        for i, b in enumerate(self.bins):
            closing = "]" if i == len(self.bins) - 1 else ")"
            label = f"[{b.low:.2f}, {b.high:.2f}{closing}"
            lines.append(f"{label:<14}{b.total:>10}{b.kept:>10}{b.dropped:>10}")
        lines.append("-" * 44)
        lines.append(f"{'all':<14}{self.total:>10}{self.kept:>10}{self.dropped_high + self.dropped_low:>10}")
        lines.append(f"dropped: {self.dropped_high} at/above the maximum, {self.dropped_low} below the minimum")
        return "\n".join(lines)


def keep_mask(pass_rates: Sequence[float] | np.ndarray, config: FilterConfig) -> tuple[np.ndarray, FilterReport]:
    """Which prompts survive the filter, and the per-bin report.

    Args:
        pass_rates: Validated pass rates in [0, 1].
        config: The thresholds.

    Returns:
        A boolean keep mask and the report.
    """
    config.validate()
    rates = np.asarray(pass_rates, dtype=np.float64)
    too_easy = rates >= config.max_pass_rate
    too_hard = (
        (rates < config.min_pass_rate) & ~too_easy if config.min_pass_rate is not None else np.zeros_like(too_easy)
    )
    keep = ~(too_easy | too_hard)
    bins = assign_bins(rates, config.num_bins)
    edges = bin_edges(config.num_bins)

    def per_bin(mask: np.ndarray) -> np.ndarray:
        return np.bincount(bins[mask], minlength=config.num_bins)

    total, kept, high, low = (per_bin(m) for m in (np.ones_like(keep), keep, too_easy, too_hard))
    reports = [
        BinReport(
            low=round(float(edges[i]), 10),
            high=round(float(edges[i + 1]), 10),
            total=int(total[i]),
            kept=int(kept[i]),
            dropped_high=int(high[i]),
            dropped_low=int(low[i]),
        )
        for i in range(config.num_bins)
    ]
    report = FilterReport(
        total=len(rates),
        kept=int(keep.sum()),
        dropped_high=int(too_easy.sum()),
        dropped_low=int(too_hard.sum()),
        bins=reports,
    )
    return keep, report


def filter_jsonl(
    input_path: str | Path,
    output_path: str | Path,
    config: FilterConfig,
    *,
    id_field: str = "id",
    pass_rate_field: str = "pass_rate",
) -> FilterReport:
    """Copy the kept lines of a JSONL file (unchanged, in order) to ``output_path``.

    Args:
        input_path: JSONL with an id and a pass rate on every line.
        output_path: Where the kept lines go (written through a temporary file, then renamed).
        config: The thresholds.
        id_field: Name of the id field (checked for presence and uniqueness).
        pass_rate_field: Name of the pass-rate field.

    Returns:
        The report.

    Raises:
        CurriculumInputError: On the first bad line (naming it), or when input and output are the same file.
    """
    config.validate()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise CurriculumInputError(f"output {str(output_path)!r} is the input file; write to another path")
    rates: list[float] = []
    objects: list[dict[str, Any]] = []
    seen: dict[Any, int] = {}
    for line_number, obj in iter_jsonl(input_path):
        where = f"{input_path} line {line_number}"
        prompt_id = check_id(obj.get(id_field), where=where, field=id_field)
        if prompt_id in seen:
            raise CurriculumInputError(f"{where}: duplicate id {prompt_id!r} (first seen on line {seen[prompt_id]})")
        seen[prompt_id] = line_number
        if pass_rate_field not in obj:
            raise CurriculumInputError(f"{where}: field {pass_rate_field!r} is missing; expected a number in [0, 1]")
        rates.append(parse_pass_rate(obj[pass_rate_field], where=where, field=pass_rate_field))
        objects.append(obj)
    keep, report = keep_mask(np.asarray(rates, dtype=np.float64), config)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for obj, kept in zip(objects, keep, strict=True):
            if kept:
                handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
    tmp.replace(output_path)
    return report
