"""Training metrics to JSONL, TensorBoard, Weights & Biases and a console progress bar.

One :class:`MetricsLogger` per run fans each ``log(step, {...})`` call out to every configured sink:

- JSONL: one object per call, ``{"step": N, "timestamp": T, **metrics}``, appended and flushed immediately. On resume
  (``resume_step=N``) rows with ``step > N`` (written after the checkpoint being resumed) and a torn last line are
  dropped first (the file is rewritten atomically), so the log matches the resumed run exactly.
- TensorBoard (``torch.utils.tensorboard``) when tensorboard is installed, purging events after the resumed step.
- Weights & Biases when ``wandb`` is installed (a warning otherwise; the run continues without it).
- A tqdm progress bar with a compact postfix of selected metrics.

With torch.distributed active, only rank 0 writes (``rank0_only=True``). No torch import at module import time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _is_rank0() -> bool:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return True
    return dist.get_rank() == 0


def _to_float(name: str, value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"metric {name!r}: expected a number or a one-element tensor, got {type(value).__name__}"
        ) from exc


def format_metric(value: float) -> str:
    """Compact console form of one value: 4 significant digits, scientific when very small or large."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the rows of a metrics JSONL file, skipping a torn (unparseable) last line."""
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return rows
    lines = p.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                break  # a crash while appending the last row
            raise ValueError(f"{p}:{i + 1}: not valid JSON ({exc.msg})") from exc
    return rows


def truncate_jsonl(path: str | os.PathLike[str], resume_step: int) -> int:
    """Drop rows with ``step > resume_step`` (and a torn last line), rewriting the file atomically.

    Args:
        path: The JSONL file (nothing happens when it does not exist).
        resume_step: The step being resumed from; rows up to and including it are kept.

    Returns:
        The number of rows removed.
    """
    p = Path(path)
    if not p.exists():
        return 0
    raw_lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows = read_jsonl(p)
    kept = [r for r in rows if int(r.get("step", -1)) <= resume_step]
    removed = len(raw_lines) - len(kept)
    if removed:
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in kept:
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    return removed


class MetricsLogger:
    """Fan out per-step metrics to JSONL, TensorBoard, W&B and a progress bar.

    Example:
        >>> with MetricsLogger(jsonl_path=path, total=100, progress=False) as log:  # doctest: +SKIP
        ...     log.log(1, {"loss": 2.5, "lr": 1e-5})
    """

    def __init__(
        self,
        *,
        jsonl_path: str | os.PathLike[str] | None = None,
        tensorboard_dir: str | os.PathLike[str] | None = None,
        wandb_project: str | None = None,
        wandb_run_name: str | None = None,
        wandb_config: Mapping[str, Any] | None = None,
        total: int | None = None,
        progress: bool = True,
        progress_keys: Sequence[str] | None = None,
        resume_step: int | None = None,
        rank0_only: bool = True,
    ) -> None:
        """Open the configured sinks.

        Args:
            jsonl_path: Append one JSON object per ``log`` call here (parent directories are created).
            tensorboard_dir: TensorBoard event directory (skipped with a warning if tensorboard is missing).
            wandb_project: W&B project (skipped with a warning if wandb is missing).
            wandb_run_name: W&B run name.
            wandb_config: Run configuration recorded in W&B.
            total: Total number of steps, for the progress bar.
            progress: Show a tqdm progress bar.
            progress_keys: Metrics shown in the bar's postfix (default: the first four of each call).
            resume_step: Resuming after this step: rows with a larger step are removed from the JSONL file and
                TensorBoard events after it are purged; the bar starts here.
            rank0_only: With torch.distributed active, only rank 0 writes anything.
        """
        self.enabled = _is_rank0() or not rank0_only
        self.jsonl_path = Path(jsonl_path) if jsonl_path is not None else None
        self.progress_keys = list(progress_keys) if progress_keys is not None else None
        self._jsonl = None
        self._tb = None
        self._wandb_run = None
        self._bar = None
        self._last_step = resume_step
        if not self.enabled:
            return
        if self.jsonl_path is not None:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                removed = truncate_jsonl(self.jsonl_path, resume_step)
                if removed:
                    logger.info("%s: removed %d rows after resumed step %d", self.jsonl_path, removed, resume_step)
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard_dir is not None:
            self._tb = self._open_tensorboard(Path(tensorboard_dir), resume_step)
        if wandb_project is not None:
            self._wandb_run = self._open_wandb(wandb_project, wandb_run_name, wandb_config)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=resume_step or 0, dynamic_ncols=True, unit="step")

    @staticmethod
    def _open_tensorboard(log_dir: Path, resume_step: int | None) -> Any | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            logger.warning("tensorboard_dir=%s given but TensorBoard is unavailable (%s); skipping it", log_dir, exc)
            return None
        purge = resume_step + 1 if resume_step is not None else None
        return SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    @staticmethod
    def _open_wandb(project: str, name: str | None, config: Mapping[str, Any] | None) -> Any | None:
        try:
            import wandb
        except ImportError:
            logger.warning("wandb_project=%r given but wandb is not installed; skipping W&B logging", project)
            return None
        return wandb.init(project=project, name=name, config=dict(config or {}), resume="allow")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record the metrics of one step in every sink.

        Args:
            step: Training step (the x axis).
            metrics: Names to numbers (floats, ints or one-element tensors).

        Raises:
            TypeError: A value is not a number.
        """
        if not self.enabled:
            return
        values = {str(k): _to_float(str(k), v) for k, v in metrics.items()}
        if "step" in values or "timestamp" in values:
            raise ValueError("metric names 'step' and 'timestamp' are reserved")
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": int(step), "timestamp": time.time(), **values}) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)
        if self._bar is not None:
            advance = step - (self._last_step or 0)
            if advance > 0:
                self._bar.update(advance)
            keys = self.progress_keys if self.progress_keys is not None else list(values)[:4]
            self._bar.set_postfix_str(
                " ".join(f"{k}={format_metric(values[k])}" for k in keys if k in values), refresh=False
            )
        self._last_step = max(step, self._last_step or 0)

    def close(self) -> None:
        """Flush and close every sink (safe to call twice)."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
