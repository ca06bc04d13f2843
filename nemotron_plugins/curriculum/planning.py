"""Vectorised planning of one epoch of batches: the progressive Gaussian curriculum and a plain random baseline.

The progressive plan follows the LN-Ultra recipe (SYSTEM.md section 3):

1. Prompts are put into ``num_bins`` equal-width pass-rate bins over ``[0, 1]`` (pass rate 1.0 goes in the last
   bin). A bin's *position* is the mean pass rate of its prompts; bins holding no prompt take no part.
2. For batch ``b`` of ``B`` the schedule gives a progress ``s = schedule(b / (B - 1))`` in [0, 1] and a centre
   ``c_b = center_start + (center_end - center_start) * s``: by default from the easiest bin (highest pass rate)
   to the hardest one. The target share of bin ``j`` is a Gaussian ``exp(-(pos_j - c_b)^2 / (2 * width^2))``
   normalised over the bins present in the data.
3. Quotas are the target shares times the batch size, rounded by largest remainder so they sum to the batch size,
   then capped by what is left in each bin. Capacity left over by the caps is filled from the bins with the largest
   remaining pools (water-filling: one prompt at a time from the currently largest pool, ties going to the bin
   nearest the centre).
4. Inside a bin prompts are taken in a seeded random order, so each prompt is used at most once per epoch; each
   batch is shuffled.

Only step 3 loops in Python, once per batch over the (few) bins; picking prompts and shuffling are array operations,
so a million prompts plan in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nemotron_plugins.curriculum.records import CurriculumInputError

#: Progress schedules: map the run fraction ``t`` in [0, 1] to how far the centre has moved, also in [0, 1].
SCHEDULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda t: t,
    "cosine": lambda t: 0.5 * (1.0 - np.cos(np.pi * t)),
    "sqrt": np.sqrt,
    "quadratic": lambda t: t * t,
    "constant": np.zeros_like,
}


#: How per-batch Gaussian targets are reconciled with the supply of each bin (see ``ProgressiveGaussianConfig``).
BALANCE_MODES = ("none", "sinkhorn")


@dataclass(kw_only=True, slots=True)
class ProgressiveGaussianConfig:
    """Shape of the progressive Gaussian curriculum (independent of batch size and data-parallel layout)."""

    num_bins: int = 10
    """Number of equal-width pass-rate bins over [0, 1]. With pass rates from k samples, ``k`` or more bins puts
    each pass-rate level in its own bin."""
    center_start: float | None = None
    """Gaussian centre (a pass rate) for the first batch; ``None`` = the position of the easiest non-empty bin."""
    center_end: float | None = None
    """Gaussian centre for the last batch; ``None`` = the position of the hardest non-empty bin."""
    width: float = 0.15
    """Standard deviation of the Gaussian, in pass-rate units (> 0). Small = sharp curriculum, large = close to
    sampling in proportion to every bin."""
    schedule: str = "linear"
    """How the centre moves over the run: one of ``linear``, ``cosine``, ``sqrt``, ``quadratic``, ``constant``."""
    balance: str = "none"
    """``"none"`` (the paper's recipe): each batch's target is the plain Gaussian; when a run uses most of the data,
    the hard bins run dry before the end and the last batches are refilled from the (easy) largest pools, so the
    mean pass rate rebounds. ``"sinkhorn"``: the Gaussian kernel is rescaled per bin (Sinkhorn matrix scaling) so
    that the targets of the whole run add up to each bin's supply; every target is still a Gaussian in pass rate
    times a fixed per-bin factor, and the per-batch mean falls monotonically over the whole run."""
    sinkhorn_iterations: int = 500
    """Maximum Sinkhorn iterations for ``balance="sinkhorn"`` (it stops early once the margins match)."""

    def validate(self) -> None:
        """Check every field.

        Raises:
            CurriculumInputError: Naming the bad field and what would be valid.
        """
        if isinstance(self.num_bins, bool) or not isinstance(self.num_bins, int) or self.num_bins < 1:
            raise CurriculumInputError(f"num_bins must be an integer >= 1, got {self.num_bins!r}")
        for name in ("center_start", "center_end"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise CurriculumInputError(f"{name} must be None or a pass rate in [0, 1], got {value!r}")
        if not (isinstance(self.width, int | float) and math.isfinite(self.width) and self.width > 0):
            raise CurriculumInputError(f"width must be a finite number > 0 (pass-rate units), got {self.width!r}")
        if self.schedule not in SCHEDULES:
            raise CurriculumInputError(f"schedule must be one of {sorted(SCHEDULES)}, got {self.schedule!r}")
        if self.balance not in BALANCE_MODES:
            raise CurriculumInputError(f"balance must be one of {list(BALANCE_MODES)}, got {self.balance!r}")
        if isinstance(self.sinkhorn_iterations, bool) or not isinstance(self.sinkhorn_iterations, int):
            raise CurriculumInputError(
                f"sinkhorn_iterations must be an integer >= 1, got {self.sinkhorn_iterations!r}"
            )
        if self.sinkhorn_iterations < 1:
            raise CurriculumInputError(
                f"sinkhorn_iterations must be an integer >= 1, got {self.sinkhorn_iterations!r}"
            )


@dataclass(frozen=True, slots=True)
class EpochPlan:
    """The batches of one epoch as a flat index array.

    Attributes:
        indices: Prompt indices of all batches, batch after batch (``int64``).
        offsets: ``num_batches + 1`` offsets; batch ``b`` is ``indices[offsets[b]:offsets[b + 1]]``.
        bin_counts: ``(num_batches, num_bins)`` prompts taken from each bin per batch (``None`` for random plans).
    """

    indices: np.ndarray
    offsets: np.ndarray
    bin_counts: np.ndarray | None = None

    @property
    def num_batches(self) -> int:
        """Number of batches in the plan."""
        return len(self.offsets) - 1

    def batch(self, b: int) -> np.ndarray:
        """Indices of batch ``b``."""
        return self.indices[self.offsets[b] : self.offsets[b + 1]]

    def batch_sizes(self) -> np.ndarray:
        """Size of every batch."""
        return np.diff(self.offsets)


def batch_sizes_for(num_samples: int, global_batch_size: int, num_batches: int | None, drop_last: bool) -> np.ndarray:
    """Sizes of the batches of one epoch.

    Args:
        num_samples: Prompts available.
        global_batch_size: Prompts per batch.
        num_batches: Batches wanted; ``None`` = as many as the data allows.
        drop_last: Without ``num_batches``: drop a final partial batch (true) or keep it (false).

    Returns:
        ``int64`` array of batch sizes (all equal to ``global_batch_size`` except maybe a final partial one).

    Raises:
        CurriculumInputError: If the batch size is not positive, larger than the data, or ``num_batches`` would
            need a prompt twice in one epoch.
    """
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise CurriculumInputError(f"global_batch_size must be an integer >= 1, got {global_batch_size!r}")
    if global_batch_size > num_samples:
        raise CurriculumInputError(
            f"global_batch_size {global_batch_size} is larger than the data ({num_samples} prompts); "
            f"use a batch size <= {num_samples}"
        )
    full = num_samples // global_batch_size
    if num_batches is not None:
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise CurriculumInputError(f"num_batches must be None or an integer >= 1, got {num_batches!r}")
        if num_batches > full:
            raise CurriculumInputError(
                f"num_batches {num_batches} x global_batch_size {global_batch_size} needs "
                f"{num_batches * global_batch_size} prompts but only {num_samples} exist (each prompt is used at most "
                f"once per epoch); use num_batches <= {full}"
            )
        return np.full(num_batches, global_batch_size, dtype=np.int64)
    sizes = np.full(full, global_batch_size, dtype=np.int64)
    remainder = num_samples - full * global_batch_size
    if remainder and not drop_last:
        sizes = np.append(sizes, remainder)
    return sizes


def assign_bins(pass_rates: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin index of each pass rate: equal-width bins over [0, 1], pass rate 1.0 in the last bin."""
    return np.minimum((pass_rates * num_bins).astype(np.int64), num_bins - 1)


def bin_edges(num_bins: int) -> np.ndarray:
    """The ``num_bins + 1`` bin edges over [0, 1]."""
    return np.linspace(0.0, 1.0, num_bins + 1)


def bin_positions(pass_rates: np.ndarray, bins: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin sizes and positions (mean pass rate of each bin; bin midpoint where a bin is empty)."""
    counts = np.bincount(bins, minlength=num_bins)
    sums = np.bincount(bins, weights=pass_rates, minlength=num_bins)
    edges = bin_edges(num_bins)
    midpoints = 0.5 * (edges[:-1] + edges[1:])
    positions = np.where(counts > 0, sums / np.maximum(counts, 1), midpoints)
    return counts, positions


def gaussian_centers(config: ProgressiveGaussianConfig, positions: np.ndarray, present: np.ndarray, n: int):
    """The Gaussian centre of each of ``n`` batches under ``config``'s schedule."""
    start = config.center_start if config.center_start is not None else float(positions[present].max())
    end = config.center_end if config.center_end is not None else float(positions[present].min())
    t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    progress = np.clip(SCHEDULES[config.schedule](t), 0.0, 1.0)
    return start + (end - start) * progress


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(peak, axis=axis) + np.log(np.sum(np.exp(x - peak), axis=axis))


def _sinkhorn_log_plan(log_kernel: np.ndarray, rows: np.ndarray, cols: np.ndarray, iterations: int) -> np.ndarray:
    """Log of ``diag(u) K diag(v)`` with row sums ``rows`` and column sums ``cols`` (log-domain Sinkhorn).

    Scaling rows and columns keeps the kernel's total positivity, so rows stay stochastically ordered by their
    centres: the balanced plan keeps the curriculum's easy-to-hard order.
    """
    with np.errstate(divide="ignore"):
        log_rows, log_cols = np.log(rows), np.log(cols)
    live = cols > 0
    log_v = np.zeros(log_kernel.shape[1])
    log_u = np.zeros(log_kernel.shape[0])
    for _ in range(iterations):
        log_u = log_rows - _logsumexp(log_kernel + log_v[None, :], axis=1)
        col_sums = _logsumexp(log_kernel + log_u[:, None], axis=0)
        log_v = np.where(live, log_cols - np.where(live, col_sums, 0.0), -np.inf)
        if np.allclose(np.exp(col_sums[live]), cols[live], rtol=1e-6, atol=1e-3):
            break
    log_u = log_rows - _logsumexp(log_kernel + log_v[None, :], axis=1)
    return log_kernel + log_u[:, None] + log_v[None, :]


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``shares`` (summing to 1) that sum exactly to ``total``."""
    exact = shares * total
    quotas = np.floor(exact).astype(np.int64)
    missing = total - int(quotas.sum())
    if missing > 0:
        # Stable order: the largest fractional parts first, ties to the lower bin index.
        order = np.argsort(-(exact - quotas), kind="stable")
        quotas[order[:missing]] += 1
    return quotas


def _water_fill(remaining: np.ndarray, amount: int, tie_order: np.ndarray) -> np.ndarray:
    """Take ``amount`` items, one at a time from the currently largest pool, in closed form.

    Args:
        remaining: Pool sizes (non-negative integers) with ``remaining.sum() >= amount``.
        amount: Items to take.
        tie_order: Bin indices in tie-break preference order (most preferred first).

    Returns:
        Items taken from each pool.
    """
    taken = np.zeros_like(remaining)
    if amount <= 0:
        return taken
    # Sort pools from largest to smallest (ties by preference); find the level T the top-k pools are cut down to.
    rank_of_bin = np.empty_like(tie_order)
    rank_of_bin[tie_order] = np.arange(len(tie_order))
    order = np.lexsort((rank_of_bin, -remaining))
    sizes = remaining[order]
    prefix = np.cumsum(sizes)
    nxt = np.append(sizes[1:], 0)
    k_index = int(np.argmax(prefix - np.arange(1, len(sizes) + 1) * nxt >= amount))
    k = k_index + 1
    level = (int(prefix[k_index]) - amount) // k  # largest T with sum(max(r - T, 0)) >= amount
    top = order[:k]
    taken[top] = remaining[top] - (level + 1)
    extra = amount - int(taken.sum())
    # All top-k pools now stand at level + 1; the extra items come from the most preferred of them.
    preferred = top[np.argsort(rank_of_bin[top], kind="stable")][:extra]
    taken[preferred] += 1
    return taken


def target_shares(
    bin_sizes: np.ndarray,
    positions: np.ndarray,
    batch_sizes: np.ndarray,
    config: ProgressiveGaussianConfig,
) -> np.ndarray:
    """The target distribution over bins of every batch, before rounding and caps.

    Args:
        bin_sizes: Prompts per bin.
        positions: Mean pass rate of each bin.
        batch_sizes: Size of each batch.
        config: The curriculum shape.

    Returns:
        ``(num_batches, num_bins)`` shares; each row sums to 1 and is zero on bins without prompts.
    """
    num_batches = len(batch_sizes)
    present = bin_sizes > 0
    centers = gaussian_centers(config, positions, present, num_batches)
    z = (positions[None, :] - centers[:, None]) / config.width
    log_w = np.where(present[None, :], -0.5 * z * z, -np.inf)
    if config.balance == "sinkhorn":
        supply = bin_sizes * (float(batch_sizes.sum()) / float(bin_sizes.sum()))
        log_w = _sinkhorn_log_plan(log_w, batch_sizes.astype(np.float64), supply, config.sinkhorn_iterations)
    log_w -= log_w.max(axis=1, keepdims=True)
    weights = np.exp(log_w)
    return weights / weights.sum(axis=1, keepdims=True)


def plan_bin_counts(
    bin_sizes: np.ndarray,
    positions: np.ndarray,
    batch_sizes: np.ndarray,
    config: ProgressiveGaussianConfig,
) -> np.ndarray:
    """How many prompts each batch takes from each bin.

    Args:
        bin_sizes: Prompts per bin.
        positions: Mean pass rate of each bin.
        batch_sizes: Size of each batch (their sum must not exceed ``bin_sizes.sum()``).
        config: The curriculum shape.

    Returns:
        ``(num_batches, num_bins)`` ``int64`` counts; row ``b`` sums to ``batch_sizes[b]`` and each column sums to
        at most the bin size.
    """
    num_batches = len(batch_sizes)
    present = bin_sizes > 0
    centers = gaussian_centers(config, positions, present, num_batches)
    shares = target_shares(bin_sizes, positions, batch_sizes, config)
    remaining = bin_sizes.astype(np.int64).copy()
    counts = np.zeros((num_batches, len(bin_sizes)), dtype=np.int64)
    # Rounding error is carried from batch to batch (error diffusion), so over any stretch of batches each bin's
    # count stays within one prompt of its target instead of drifting by a prompt per batch.
    debt = np.zeros(len(bin_sizes))
    for b in range(num_batches):
        size = int(batch_sizes[b])
        exact = shares[b] * size + debt
        wanted = np.maximum(exact, 0.0)
        rounded = _largest_remainder(wanted / wanted.sum(), size)
        debt = exact - rounded
        quota = np.minimum(rounded, remaining)
        left = remaining - quota
        leftover = size - int(quota.sum())
        if leftover:
            tie_order = np.argsort(np.abs(positions - centers[b]), kind="stable")
            quota += _water_fill(left, leftover, tie_order)
        counts[b] = quota
        remaining -= quota
    return counts


def plan_progressive_epoch(
    pass_rates: np.ndarray,
    batch_sizes: np.ndarray,
    config: ProgressiveGaussianConfig,
    rng: np.random.Generator,
) -> EpochPlan:
    """Plan one epoch of progressive Gaussian batches.

    Args:
        pass_rates: Validated ``float64`` pass rates, one per prompt index.
        batch_sizes: Size of each batch (see :func:`batch_sizes_for`).
        config: The curriculum shape (validated).
        rng: Random generator; the same generator state gives the same plan.

    Returns:
        The plan: indices of every batch (each prompt at most once), shuffled within each batch.
    """
    num_bins = config.num_bins
    bins = assign_bins(pass_rates, num_bins)
    bin_sizes, positions = bin_positions(pass_rates, bins, num_bins)
    counts = plan_bin_counts(bin_sizes, positions, batch_sizes, config)

    # Every bin's prompts in a random order: a random permutation, then a stable (radix) sort by bin.
    small = np.int16 if num_bins < 2**15 else np.int64
    permutation = rng.permutation(len(pass_rates))
    by_bin = permutation[np.argsort(bins[permutation].astype(small), kind="stable")]
    bin_start = np.concatenate(([0], np.cumsum(bin_sizes)[:-1]))

    # Slot s of the epoch (batch-major, then bin) takes the next unused prompt of its bin.
    slot_bin = np.repeat(np.tile(np.arange(num_bins), len(batch_sizes)), counts.ravel())
    slot_order = np.argsort(slot_bin.astype(small), kind="stable")
    taken_per_bin = counts.sum(axis=0)
    group_start = np.concatenate(([0], np.cumsum(taken_per_bin)[:-1]))
    rank = np.empty(len(slot_bin), dtype=np.int64)
    rank[slot_order] = np.arange(len(slot_bin)) - np.repeat(group_start, taken_per_bin)
    chosen = by_bin[bin_start[slot_bin] + rank]

    offsets = np.concatenate(([0], np.cumsum(batch_sizes))).astype(np.int64)
    return EpochPlan(indices=_shuffle_within_batches(chosen, offsets, rng), offsets=offsets, bin_counts=counts)


def plan_random_epoch(num_samples: int, batch_sizes: np.ndarray, rng: np.random.Generator) -> EpochPlan:
    """Plan one epoch of uniformly random batches (the baseline): a permutation cut into batches."""
    offsets = np.concatenate(([0], np.cumsum(batch_sizes))).astype(np.int64)
    indices = rng.permutation(num_samples)[: int(offsets[-1])].astype(np.int64)
    return EpochPlan(indices=indices, offsets=offsets)


def _shuffle_within_batches(indices: np.ndarray, offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sizes = np.diff(offsets)
    if len(sizes) and (sizes == sizes[0]).all():
        rows = indices.reshape(len(sizes), int(sizes[0]))
        perm = np.argsort(rng.random(rows.shape), axis=1)
        return np.take_along_axis(rows, perm, axis=1).ravel()
    batch_of_slot = np.repeat(np.arange(len(sizes)), sizes)
    return indices[np.argsort(batch_of_slot + rng.random(len(indices)), kind="stable")]
