"""Batch samplers over prompt indices: the progressive Gaussian curriculum and a plain random baseline.

Both samplers plan each epoch's *global* batches from ``(seed, epoch)`` alone, so every data-parallel rank computes
the same plan and takes its own contiguous slice of every global batch. They are plain iterables with ``__len__``,
so they work as ``torch.utils.data.DataLoader(dataset, batch_sampler=sampler)``; :class:`MicroBatchSampler` cuts
each rank's slice into micro-batches for Megatron-style loops, and :meth:`PlannedBatchSampler.set_consumed_samples`
resumes from Megatron's ``consumed_samples`` counter.

Epochs: iterating a sampler yields the rest of the current epoch. When the last batch of an epoch is handed out the
sampler moves on to the next epoch (a fresh shuffle), so ``for batch in sampler`` run twice gives two epochs.
:meth:`~PlannedBatchSampler.set_epoch` jumps to an epoch's start (it keeps the position when called with the
current epoch, so a resumed run may call it as usual).

Resume: :meth:`~PlannedBatchSampler.state_dict` holds plain ints and strings (safe for ``torch.load(weights_only=True)``)
and counts a batch as consumed as soon as it is yielded, so saving after training on batch ``b`` and loading into a
fresh sampler continues with batch ``b + 1`` exactly.

Example:
    >>> sampler = ProgressiveGaussianBatchSampler([0.0, 0.125, 0.5, 0.625] * 4, global_batch_size=4, seed=1)
    >>> len(sampler), [len(batch) for batch in sampler]
    (4, [4, 4, 4, 4])
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nemotron_plugins.curriculum.planning import (
    EpochPlan,
    ProgressiveGaussianConfig,
    batch_sizes_for,
    plan_progressive_epoch,
    plan_random_epoch,
)
from nemotron_plugins.curriculum.records import CurriculumInputError, validate_pass_rate_array

STATE_VERSION = 1


@dataclass(kw_only=True, slots=True)
class CurriculumSamplerConfig:
    """Which batch sampler a trainer builds over its prompts, and how (see :func:`build_batch_sampler`)."""

    sampler: str = "progressive_gaussian"
    """Name in ``BATCH_SAMPLERS``: ``progressive_gaussian`` (the curriculum) or ``random`` (the baseline)."""
    global_batch_size: int = 576
    """Prompts per global batch, over all data-parallel ranks (LN-Ultra: 72 prompts x 8 rollouts = 576 samples;
    set it to the prompt count per step of your trainer)."""
    num_batches: int | None = None
    """Batches per epoch; ``None`` = as many as the data allows. The curriculum spans exactly these batches."""
    seed: int = 0
    """Seed of the plan; the same seed, epoch and data give the same batches on every rank and every run."""
    drop_last: bool = True
    """Drop a final partial batch (keeps every batch exactly ``global_batch_size``)."""
    curriculum: ProgressiveGaussianConfig = field(default_factory=ProgressiveGaussianConfig)
    """Shape of the progressive curriculum (ignored by the random sampler)."""


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise CurriculumInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class PlannedBatchSampler:
    """Common machinery: epochs, data-parallel slicing, exact resume. Subclasses implement :meth:`_plan`.

    Args:
        num_samples: Number of prompts (indices ``0 .. num_samples - 1``).
        global_batch_size: Prompts per global batch (all ranks together); divisible by ``dp_world_size``.
        num_batches: Batches per epoch; ``None`` = ``num_samples // global_batch_size`` (plus a partial one when
            ``drop_last`` is false).
        seed: Non-negative seed.
        dp_rank: This rank's data-parallel index.
        dp_world_size: Number of data-parallel ranks.
        drop_last: Drop a final partial batch. A kept partial batch is split across ranks as evenly as possible.
    """

    kind = "planned"

    def __init__(
        self,
        num_samples: int,
        *,
        global_batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.seed = _check_int("seed", seed, 0)
        self.dp_world_size = _check_int("dp_world_size", dp_world_size, 1)
        self.dp_rank = _check_int("dp_rank", dp_rank, 0)
        if self.dp_rank >= self.dp_world_size:
            raise CurriculumInputError(f"dp_rank must be in [0, {self.dp_world_size - 1}], got {dp_rank}")
        self.global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
        if self.global_batch_size % self.dp_world_size:
            raise CurriculumInputError(
                f"global_batch_size {global_batch_size} is not divisible by dp_world_size {dp_world_size}; every "
                "rank must get the same number of prompts"
            )
        self.drop_last = bool(drop_last)
        self.batch_sizes = batch_sizes_for(self.num_samples, self.global_batch_size, num_batches, self.drop_last)
        self.num_batches = len(self.batch_sizes)
        self.epoch = 0
        self._cursor = 0
        self._cached: tuple[int, EpochPlan] | None = None

    # ----------------------------------------------------------------------------------------------- planning
    def _plan(self, rng: np.random.Generator) -> EpochPlan:
        raise NotImplementedError

    def _fingerprint_parts(self) -> list[bytes]:
        return [self.kind.encode()]

    def fingerprint(self) -> str:
        """A short hash of everything that decides the plan except seed and epoch (data, sizes, curriculum)."""
        digest = hashlib.sha256()
        for part in [*self._fingerprint_parts(), self.batch_sizes.tobytes()]:
            digest.update(part)
        return digest.hexdigest()[:16]

    def plan_epoch(self, epoch: int | None = None) -> EpochPlan:
        """The global plan of ``epoch`` (default: the current one), computed once and cached."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, 0)
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._cached = (epoch, self._plan(rng))
        return self._cached[1]

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Every global batch of ``epoch`` (all ranks), as lists of prompt indices. Does not move the position."""
        plan = self.plan_epoch(epoch)
        return [plan.batch(b).tolist() for b in range(plan.num_batches)]

    def rank_slice(self, batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of one global batch."""
        return np.array_split(batch, self.dp_world_size)[self.dp_rank]

    # ------------------------------------------------------------------------------------------- iteration
    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        plan = self.plan_epoch(epoch)
        for b in range(self._cursor, self.num_batches):
            batch = self.rank_slice(plan.batch(b)).tolist()
            # Count the batch as consumed before handing it out: a state_dict taken while the caller trains on
            # it resumes at the next one. Finishing an epoch moves on to the next.
            if b + 1 == self.num_batches:
                self.epoch, self._cursor = epoch + 1, 0
            else:
                self._cursor = b + 1
            yield batch
            if self.epoch != epoch:  # set_epoch / load_state_dict was called while iterating
                return

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of ``epoch``; calling it with the current epoch keeps the position (resume-safe)."""
        epoch = _check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.epoch, self._cursor = epoch, 0

    @property
    def position(self) -> tuple[int, int]:
        """``(epoch, next batch index)``."""
        return self.epoch, self._cursor

    def set_consumed_samples(self, consumed_samples: int) -> None:
        """Resume from Megatron's global ``consumed_samples`` counter (samples over all ranks and epochs).

        Raises:
            CurriculumInputError: If the count is not a whole number of global batches or the epoch has a partial
                batch (``drop_last=False`` with a remainder).
        """
        consumed_samples = _check_int("consumed_samples", consumed_samples, 0)
        if (self.batch_sizes != self.global_batch_size).any():
            raise CurriculumInputError(
                "set_consumed_samples needs equal batches; build the sampler with drop_last=True"
            )
        if consumed_samples % self.global_batch_size:
            raise CurriculumInputError(
                f"consumed_samples {consumed_samples} is not a multiple of global_batch_size {self.global_batch_size}"
            )
        self.epoch, self._cursor = divmod(consumed_samples // self.global_batch_size, self.num_batches)

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain-data state for exact resume (ints and strings only)."""
        return {
            "version": STATE_VERSION,
            "kind": self.kind,
            "epoch": self.epoch,
            "next_batch": self._cursor,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "global_batch_size": self.global_batch_size,
            "num_batches": self.num_batches,
            "fingerprint": self.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        The data-parallel layout may differ from the saving run (the global plan does not depend on it); the data,
        batch sizes, curriculum and seed must match.

        Raises:
            CurriculumInputError: If the state belongs to a different sampler, data set or configuration; the
                message names the mismatching field.
        """
        if not isinstance(state, dict):
            raise CurriculumInputError(f"sampler state must be a dict from state_dict(), got {type(state).__name__}")
        missing = [k for k in ("version", "kind", "epoch", "next_batch", "seed", "fingerprint") if k not in state]
        if missing:
            raise CurriculumInputError(f"sampler state is missing {missing}; was it written by state_dict()?")
        if state["version"] != STATE_VERSION:
            raise CurriculumInputError(f"sampler state version {state['version']!r} != supported {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("kind", "seed", "num_samples", "global_batch_size", "num_batches", "fingerprint"):
            if key in state and state[key] != mine[key]:
                raise CurriculumInputError(
                    f"sampler state field {key!r} is {state[key]!r} but this sampler has {mine[key]!r}; resuming "
                    "needs the same data, batch sizes, curriculum and seed"
                )
        epoch = _check_int("state['epoch']", state["epoch"], 0)
        cursor = _check_int("state['next_batch']", state["next_batch"], 0)
        if cursor >= self.num_batches:
            raise CurriculumInputError(f"state['next_batch'] {cursor} must be < num_batches {self.num_batches}")
        self.epoch, self._cursor = epoch, cursor

    @classmethod
    def from_config(
        cls, pass_rates: Sequence[float] | np.ndarray, config: CurriculumSamplerConfig, *, dp_rank: int = 0,
        dp_world_size: int = 1,
    ) -> PlannedBatchSampler:  # fmt: skip
        """Build the sampler from a :class:`CurriculumSamplerConfig`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, global_batch_size={self.global_batch_size}, "
            f"num_batches={self.num_batches}, seed={self.seed}, dp_rank={self.dp_rank}, "
            f"dp_world_size={self.dp_world_size}, epoch={self.epoch}, next_batch={self._cursor})"
        )


class ProgressiveGaussianBatchSampler(PlannedBatchSampler):
    """The LN-Ultra curriculum: batches move from easy (high pass rate) to hard prompts on a Gaussian schedule.

    See :mod:`nemotron_plugins.curriculum.planning` for the algorithm.

    Args:
        pass_rates: One pass rate in [0, 1] per prompt index.
        global_batch_size: Prompts per global batch (all ranks).
        num_batches: Batches per epoch; the curriculum spans exactly these. ``None`` = as many as the data allows.
        num_bins: Equal-width pass-rate bins over [0, 1].
        center_start: Gaussian centre of the first batch; ``None`` = the easiest bin's mean pass rate.
        center_end: Gaussian centre of the last batch; ``None`` = the hardest bin's mean pass rate.
        width: Gaussian standard deviation in pass-rate units.
        schedule: How the centre moves: ``linear``, ``cosine``, ``sqrt``, ``quadratic`` or ``constant``.
        balance: ``"none"`` (the paper) or ``"sinkhorn"`` (targets rescaled to the data's supply so the mean falls
            to the very end even when the run uses all prompts).
        seed: Non-negative seed.
        dp_rank: This rank's data-parallel index.
        dp_world_size: Number of data-parallel ranks.
        drop_last: Drop a final partial batch.

    Raises:
        CurriculumInputError: On bad pass rates (naming the index) or parameters (naming the field).
    """

    kind = "progressive_gaussian"

    def __init__(
        self,
        pass_rates: Sequence[float] | np.ndarray,
        *,
        global_batch_size: int,
        num_batches: int | None = None,
        num_bins: int = 10,
        center_start: float | None = None,
        center_end: float | None = None,
        width: float = 0.15,
        schedule: str = "linear",
        balance: str = "none",
        seed: int = 0,
        dp_rank: int = 0,
        dp_world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.pass_rates = validate_pass_rate_array(pass_rates)
        self.curriculum = ProgressiveGaussianConfig(
            num_bins=num_bins,
            center_start=center_start,
            center_end=center_end,
            width=width,
            schedule=schedule,
            balance=balance,
        )
        self.curriculum.validate()
        super().__init__(
            len(self.pass_rates),
            global_batch_size=global_batch_size,
            num_batches=num_batches,
            seed=seed,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            drop_last=drop_last,
        )

    def _plan(self, rng: np.random.Generator) -> EpochPlan:
        return plan_progressive_epoch(self.pass_rates, self.batch_sizes, self.curriculum, rng)

    def _fingerprint_parts(self) -> list[bytes]:
        return [self.kind.encode(), self.pass_rates.tobytes(), repr(sorted(asdict(self.curriculum).items())).encode()]

    def batch_mean_pass_rates(self, epoch: int | None = None) -> np.ndarray:
        """Mean pass rate of every global batch of ``epoch``."""
        plan = self.plan_epoch(epoch)
        sums = np.add.reduceat(self.pass_rates[plan.indices], plan.offsets[:-1])
        return sums / plan.batch_sizes()

    @classmethod
    def from_config(
        cls, pass_rates: Sequence[float] | np.ndarray, config: CurriculumSamplerConfig, *, dp_rank: int = 0,
        dp_world_size: int = 1,
    ) -> ProgressiveGaussianBatchSampler:  # fmt: skip
        """Build the sampler from a :class:`CurriculumSamplerConfig`."""
        c = config.curriculum
        return cls(
            pass_rates,
            global_batch_size=config.global_batch_size,
            num_batches=config.num_batches,
            num_bins=c.num_bins,
            center_start=c.center_start,
            center_end=c.center_end,
            width=c.width,
            schedule=c.schedule,
            balance=c.balance,
            seed=config.seed,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            drop_last=config.drop_last,
        )


class RandomBatchSampler(PlannedBatchSampler):
    """Uniformly random batches (a seeded permutation cut into batches): the baseline without a curriculum.

    Args:
        data: The pass rates (or any sequence with one entry per prompt), or the number of prompts.
        global_batch_size: Prompts per global batch (all ranks).
        num_batches: Batches per epoch; ``None`` = as many as the data allows.
        seed: Non-negative seed.
        dp_rank: This rank's data-parallel index.
        dp_world_size: Number of data-parallel ranks.
        drop_last: Drop a final partial batch.
    """

    kind = "random"

    def __init__(
        self,
        data: Sequence[Any] | np.ndarray | int,
        *,
        global_batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        num_samples = data if isinstance(data, int | np.integer) and not isinstance(data, bool) else len(data)
        super().__init__(
            num_samples,
            global_batch_size=global_batch_size,
            num_batches=num_batches,
            seed=seed,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            drop_last=drop_last,
        )

    def _plan(self, rng: np.random.Generator) -> EpochPlan:
        return plan_random_epoch(self.num_samples, self.batch_sizes, rng)

    def _fingerprint_parts(self) -> list[bytes]:
        return [self.kind.encode(), str(self.num_samples).encode()]

    @classmethod
    def from_config(
        cls, pass_rates: Sequence[float] | np.ndarray, config: CurriculumSamplerConfig, *, dp_rank: int = 0,
        dp_world_size: int = 1,
    ) -> RandomBatchSampler:  # fmt: skip
        """Build the sampler from a :class:`CurriculumSamplerConfig` (the curriculum part is ignored)."""
        return cls(
            pass_rates,
            global_batch_size=config.global_batch_size,
            num_batches=config.num_batches,
            seed=config.seed,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            drop_last=config.drop_last,
        )


class MicroBatchSampler:
    """Cuts each rank batch of a planned sampler into micro-batches (Megatron's per-rank micro-batch stream).

    Args:
        batch_sampler: The sampler giving this rank's share of each global batch.
        micro_batch_size: Prompts per micro-batch; must divide the per-rank batch size.

    Position and resume live in ``batch_sampler`` (resume at global-batch boundaries, as Megatron checkpoints).
    """

    def __init__(self, batch_sampler: PlannedBatchSampler, micro_batch_size: int) -> None:
        self.batch_sampler = batch_sampler
        self.micro_batch_size = _check_int("micro_batch_size", micro_batch_size, 1)
        per_rank = batch_sampler.global_batch_size // batch_sampler.dp_world_size
        if per_rank % self.micro_batch_size:
            raise CurriculumInputError(
                f"micro_batch_size {micro_batch_size} does not divide the per-rank batch of {per_rank} "
                f"(global_batch_size {batch_sampler.global_batch_size} / dp_world_size {batch_sampler.dp_world_size})"
            )
        self.micro_batches_per_batch = per_rank // self.micro_batch_size

    def __len__(self) -> int:
        return len(self.batch_sampler) * self.micro_batches_per_batch

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            for start in range(0, len(batch), self.micro_batch_size):
                yield batch[start : start + self.micro_batch_size]


def build_batch_sampler(
    pass_rates: Sequence[float] | np.ndarray,
    config: CurriculumSamplerConfig,
    *,
    dp_rank: int = 0,
    dp_world_size: int = 1,
) -> PlannedBatchSampler:
    """Build the sampler named by ``config.sampler`` from the ``BATCH_SAMPLERS`` registry.

    Args:
        pass_rates: One pass rate per prompt index.
        config: Which sampler and how.
        dp_rank: This rank's data-parallel index.
        dp_world_size: Number of data-parallel ranks.

    Returns:
        The sampler (anything registered must offer ``from_config`` with this signature).
    """
    from nemotron_plugins.registry import BATCH_SAMPLERS

    cls = BATCH_SAMPLERS.get(config.sampler)
    return cls.from_config(pass_rates, config, dp_rank=dp_rank, dp_world_size=dp_world_size)
