"""One-step off-policy rollouts: the next step's generation and reward scoring overlapped with the policy update.

With ``generation.async_rollouts`` the controller (:func:`~nemotron_plugins.rl.controller.train_step`) runs one
step as::

    rollouts of step t (prefetched during step t - 1, or collected now)
    -> advantages, the update's samples
    -> start collecting step t + 1 in a background thread, with the weights the generation engine holds
    -> the policy update on step t's samples (main thread, meanwhile)
    -> wait for the thread -> refit the generation engine

so the rollouts of step ``t + 1`` come from the weights before update ``t``: one policy version behind the policy
they train (``async/weight_version_lag`` = 1). The engine must have weights of its own that the update does not
touch (the megatron copy engine, ``generation.megatron_layout="generation"``, or vLLM); the loss corrects for the
stale behaviour policy with the truncated importance weight ``pi_old / pi_generator``
(``algorithm.importance_sampling_correction``), as NeMo-RL's async GRPO and verl's one-step off-policy recipe do.

Process groups: gloo and NCCL order the collectives of one group in the order each rank issues them, so two threads
must never issue collectives on the same group at once. The background thread uses only

* the generation engine's own groups: the megatron copy engine's TP groups
  (:func:`~nemotron_plugins.puzzle.model.single_stage_process_groups`) for decoding and the generation replicas'
  peer group (:meth:`~nemotron_plugins.rl.engines.base.EngineLayout.peer_group`) for
  :func:`~nemotron_plugins.rl.generation.exchange_samples`, neither of which the update uses;
* a gloo group over the whole world made here (:attr:`AsyncRollouts.group`) for the distributed reward scoring,
  instead of the default group that the update's metric reductions use.

The refit stream (the training model-parallel groups) runs only after the thread is joined, and nothing between
steps (held-out evaluation, checkpoints) runs while a thread is in flight: the thread always ends inside the step
that started it.

Checkpoints: the controller does not prefetch in a step that ends with a checkpoint, so no rollouts are in flight at
a save and the step after it collects its rollouts synchronously from the saved weights, in the uninterrupted run
and in a resumed one alike (a resume is exact; the price is one synchronous step per checkpoint).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Collect = Callable[[int, dict[str, float], Any], list[Any]]
"""``collect(step, timings, score_group) -> rounds``: the step's scored rollout rounds (drawing its prompts from the
sampler, its seeds from the step), adding its generation / reward seconds to ``timings``."""


@dataclass(kw_only=True, slots=True)
class Prefetched:
    """The rollouts of one step and where they came from."""

    step: int
    """The step they are for."""
    rounds: list[Any] = field(default_factory=list)
    """The scored rollout rounds (:class:`~nemotron_plugins.rl.controller.RolloutRound`)."""
    version: int = 0
    """Generation weight version they were generated with (policy updates the engine had been refitted to)."""
    timings: dict[str, float] = field(default_factory=lambda: {"rollout": 0.0, "reward": 0.0})
    """Generation / reward seconds."""
    background: bool = False
    """Collected by the background thread (overlapping an update), not synchronously."""
    error: BaseException | None = None
    """What the background collection raised (re-raised by :meth:`AsyncRollouts.wait`)."""


@dataclass(kw_only=True, slots=True)
class Taken:
    """:meth:`AsyncRollouts.take`'s answer."""

    rounds: list[Any]
    """The step's scored rollout rounds."""
    timings: dict[str, float]
    """Their generation / reward seconds."""
    metrics: dict[str, float]
    """``async/weight_version_lag`` (policy updates between the generating weights and the policy now) and
    ``async/prefetched`` (1: collected in the background during the previous update)."""


def _thread_device_context() -> Any:
    """The calling thread's device setup for a thread that runs the model: torch function modes (the CPU adapter's
    :class:`~nemotron_plugins.runtime.cpu.CudaToCpuMode`) and the current CUDA device are per thread."""
    from nemotron_plugins.runtime import cpu

    if cpu.is_cpu_adapter_active():
        return lambda: cpu.CudaToCpuMode()
    if torch.cuda.is_available():
        device = torch.cuda.current_device()
        return lambda: torch.cuda.device(device)
    return contextlib.nullcontext


class AsyncRollouts:
    """A one-slot prefetcher of scored rollouts: :meth:`start` collects a step's rollouts in a background thread,
    :meth:`wait` joins it, :meth:`take` hands them to the step (or collects synchronously when none were prefetched).

    Building it is a collective over the world (it creates :attr:`group`): every rank builds it, at the same point.

    Args:
        collect: Collects one step's rollouts (see :data:`Collect`); called with :attr:`group` as the scoring group.
    """

    def __init__(self, collect: Collect) -> None:
        self._collect = collect
        self.group: Any = None
        """A gloo group over the whole world for the reward scoring of the collection (``None``: one process)."""
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            self.group = torch.distributed.new_group(list(range(torch.distributed.get_world_size())), backend="gloo")
        self._device_context = _thread_device_context()
        self._pending: Prefetched | None = None
        self._thread: threading.Thread | None = None
        self.policy_version = 0
        """Policy updates so far (in this process)."""
        self.generation_version = 0
        """The policy version the generation engine was last refitted to."""

    # ------------------------------------------------------------------------------------------------ the step
    def take(self, step: int) -> Taken:
        """The rollouts of ``step``: the prefetched ones when :meth:`start` was called for it, else collected now
        (synchronously, with the engine's current weights).

        Raises:
            RuntimeError: A prefetch for another step is pending, or the background thread was not joined.
        """
        if self._thread is not None:
            raise RuntimeError("AsyncRollouts.take: the background collection was not joined (call wait() first)")
        pending, self._pending = self._pending, None
        if pending is None:
            pending = Prefetched(step=step, version=self.generation_version)
            pending.rounds = self._collect(step, pending.timings, self.group)
        elif pending.step != step:
            raise RuntimeError(f"AsyncRollouts.take({step}): the prefetched rollouts are for step {pending.step}")
        return Taken(
            rounds=pending.rounds,
            timings=pending.timings,
            metrics={
                "async/weight_version_lag": float(self.policy_version - pending.version),
                "async/prefetched": float(pending.background),
            },
        )

    def start(self, step: int) -> None:
        """Begin collecting ``step``'s rollouts in a background thread, with the generation engine's current
        weights; the caller must :meth:`wait` before the engine changes (a refit) and before the next :meth:`take`.

        Raises:
            RuntimeError: A collection is already pending.
        """
        if self._pending is not None or self._thread is not None:
            raise RuntimeError(f"AsyncRollouts.start({step}): rollouts are already pending (one slot)")
        pending = Prefetched(step=step, version=self.generation_version, background=True)
        self._pending = pending
        self._thread = threading.Thread(
            target=self._run, args=(pending,), name=f"async-rollouts-step-{step}", daemon=True
        )
        self._thread.start()

    def _run(self, pending: Prefetched) -> None:
        try:
            with self._device_context(), torch.no_grad():
                pending.rounds = self._collect(pending.step, pending.timings, self.group)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by wait()
            pending.error = exc

    def wait(self) -> float:
        """Join the background collection (nothing to do without one); returns the seconds waited.

        Raises:
            BaseException: Whatever the background collection raised (a reward failure past
                ``max_reward_failure_rate``, an engine error...), with its traceback.
        """
        if self._thread is None:
            return 0.0
        t0 = time.perf_counter()
        self._thread.join()
        self._thread = None
        waited = time.perf_counter() - t0
        if self._pending is not None and self._pending.error is not None:
            error, self._pending = self._pending.error, None
            raise error
        return waited

    # ------------------------------------------------------------------------------------------------ versions
    def updated(self) -> None:
        """The policy took an update (its version advances)."""
        self.policy_version += 1

    def refitted(self) -> None:
        """The generation engine now holds the current policy's weights."""
        self.generation_version = self.policy_version

    @property
    def in_flight(self) -> bool:
        """A background collection is running or its rollouts wait to be taken."""
        return self._thread is not None or self._pending is not None
