"""A pool of worker processes for CPU-heavy rewards, with a hard per-sample time bound.

:class:`PooledReward` wraps any picklable :class:`~nemotron_plugins.rewards.base.Reward` (``math``, ``ifeval``, ...)
and scores a batch across ``workers`` processes. Each worker receives small chunks of samples and streams one result
back per sample. The parent waits on all workers at once; when a worker makes no progress for ``timeout_s`` seconds
it is killed (SIGKILL) and replaced, the sample it was working on gets status ``timeout``, and the rest of its chunk is
handed to another worker. A worker that dies on its own (crash, memory limit) gives its current sample status
``error``. Results come back in input order and depend only on each sample, so a batch's outcome is deterministic.

Workers are plain ``python -m nemotron_plugins.rewards.pool_worker`` subprocesses talking over two pipes: nothing is
forked from a (possibly multi-threaded) trainer and the caller's ``__main__`` is never re-imported, so a script
without an ``if __name__ == "__main__"`` guard works. Each worker imports the reward's ``preload_modules`` and calls
its optional ``warmup()`` before it reports ready (start-up time does not count against ``timeout_s``), caps its
address space at its start size plus ``memory_limit_mb`` (a sample that builds a gigantic number fails with
``MemoryError`` instead of exhausting the machine) and is killed by the kernel if the parent dies (Linux).

Lifetime: Linux's parent-death signal fires when the *thread* that forked the child exits, not the process. Every
worker is therefore started by one long-lived daemon thread of this module (:func:`_spawn_process`), so a pool made
or used from a short-lived thread (a trainer's reward thread, a request handler) keeps its workers until the pool is
closed or the process exits.

:func:`bounded_reward` is what the adapters use: it puts a reward (or the CPU-bound parts of a composition) behind a
pool, and leaves rewards that are bounded by construction (server-backed ones with deadlines) as they are.

Example:
    >>> from nemotron_plugins.rewards.base import RewardSample, build_reward
    >>> with build_reward({"pool": "math", "workers": 2, "timeout_s": 10}) as reward:
    ...     [r.score for r in reward.score([RewardSample(completion="\\\\boxed{4}", ground_truth="4")])]
    [1.0]
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from nemotron_plugins.rewards.base import Reward, RewardResult, RewardSample

logger = logging.getLogger(__name__)

_WORKER_MODULE = "nemotron_plugins.rewards.pool_worker"


class _Spawner:
    """A daemon thread that starts the worker processes, so their parent-death signal is tied to the process's
    lifetime rather than to whichever thread asked for a worker."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[dict, Future]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, **kwargs: object) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="reward-pool-spawner", daemon=True)
                self._thread.start()
        done: Future = Future()
        self._requests.put((kwargs, done))
        return done.result()

    def _loop(self) -> None:
        while True:
            kwargs, done = self._requests.get()
            try:
                done.set_result(subprocess.Popen(**kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)


#: The process-wide spawner (module state by necessity: see the module docstring, "Lifetime").
_SPAWNER = _Spawner()


def _spawn_process(**kwargs: object) -> subprocess.Popen:
    """``subprocess.Popen(**kwargs)`` run on the spawner thread."""
    return _SPAWNER.popen(**kwargs)


@dataclass(slots=True, eq=False)
class _Worker:
    proc: subprocess.Popen
    recv: Connection
    send: Connection
    state: str = "starting"  # starting | idle | busy | dead
    started_at: float = field(default_factory=time.monotonic)
    pending: deque[int] = field(default_factory=deque)
    last_progress: float = 0.0


class PooledReward(Reward):
    """Score a picklable reward in worker processes with a per-sample timeout.

    Args:
        reward: The reward to run in the workers (pickled once per worker).
        workers: Number of worker processes.
        timeout_s: Hard bound on one sample's scoring time; past it the worker is killed and replaced and the sample
            gets status ``timeout``.
        chunk_size: Most samples handed to a worker at once (smaller chunks balance better, larger ones cost less IPC).
        memory_limit_mb: Address-space headroom per worker above its size at start; ``None`` for no cap.
        startup_timeout_s: Bound on a worker's start-up (imports); a worker that does not report ready is replaced.
        max_start_failures: Start-up failures in one batch after which the remaining samples get status ``error``.
        preload_modules: Modules each worker imports before reporting ready (default: the reward's
            ``preload_modules`` attribute).
    """

    def __init__(
        self,
        reward: Reward,
        *,
        workers: int = 2,
        timeout_s: float = 10.0,
        chunk_size: int = 16,
        memory_limit_mb: int | None = 2048,
        startup_timeout_s: float = 120.0,
        max_start_failures: int = 3,
        preload_modules: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(reward, Reward):
            raise TypeError(f"PooledReward needs a Reward, got {type(reward).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.reward = reward
        self.name = reward.name
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self.chunk_size = max(1, int(chunk_size))
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout_s = float(startup_timeout_s)
        self.max_start_failures = max(1, int(max_start_failures))
        modules = preload_modules if preload_modules is not None else getattr(reward, "preload_modules", ())
        self._init = {
            "reward": pickle.dumps(reward),
            "preload": [type(reward).__module__, *modules],
            "memory_limit_mb": memory_limit_mb,
        }
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Workers killed for running past ``timeout_s`` since creation (for tests and metrics).
        self.killed = 0
        #: Workers started since creation.
        self.started = 0

    # -- worker management -------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env.setdefault("OMP_NUM_THREADS", "1")
        try:
            proc = _spawn_process(
                args=[sys.executable, "-m", _WORKER_MODULE, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.started += 1
        worker = _Worker(
            proc=proc, recv=Connection(from_child_r, writable=False), send=Connection(to_child_w, readable=False)
        )
        try:
            worker.send.send(self._init)
        except OSError:
            pass  # noticed as EOF on its pipe
        return worker

    @staticmethod
    def _kill(worker: _Worker) -> None:
        worker.state = "dead"
        if worker.proc.poll() is None:
            try:
                worker.proc.kill()
            except OSError:
                pass
        try:
            worker.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.warning("reward worker %d did not exit after SIGKILL", worker.proc.pid)
        worker.recv.close()
        worker.send.close()

    def _replace(self, worker: _Worker) -> None:
        self._kill(worker)
        if worker in self._pool:
            self._pool.remove(worker)
        self._pool.append(self._spawn())

    def _ensure_workers(self) -> None:
        for w in list(self._pool):
            if w.proc.poll() is not None:
                self._kill(w)
                self._pool.remove(w)
        while len(self._pool) < self.workers:
            self._pool.append(self._spawn())

    # -- scoring ---------------------------------------------------------------------------------------------------
    def score(self, samples: Sequence[RewardSample]) -> list[RewardResult]:
        """Score ``samples`` across the workers; one result per sample, in input order, never raising."""
        samples = list(samples)
        if not samples:
            return []
        with self._lock:
            if self._closed:
                raise RuntimeError(f"PooledReward({self.name!r}) is closed")
            self._ensure_workers()
            return self._run(samples)

    def _run(self, samples: list[RewardSample]) -> list[RewardResult]:  # noqa: C901 - one event loop
        n = len(samples)
        results: list[RewardResult | None] = [None] * n
        chunk = max(1, min(self.chunk_size, math.ceil(n / (self.workers * 4))))
        todo: deque[list[int]] = deque(list(range(i, min(i + chunk, n))) for i in range(0, n, chunk))
        remaining = n
        start_failures = 0
        last_failure = ""

        def settle(index: int, result: RewardResult) -> None:
            nonlocal remaining
            if results[index] is None:
                results[index] = result
                remaining -= 1

        def lose(worker: _Worker, result: RewardResult | None) -> None:
            """A busy worker is gone: its current sample gets ``result``, the rest of its chunk goes back."""
            if worker.pending and result is not None:
                settle(worker.pending.popleft(), result)
            if worker.pending:
                todo.appendleft(list(worker.pending))
            worker.pending.clear()
            self._replace(worker)

        def start_failed(worker: _Worker, why: str) -> None:
            nonlocal start_failures, last_failure
            start_failures += 1
            last_failure = why
            self._kill(worker)
            self._pool.remove(worker)
            if start_failures < self.max_start_failures:
                self._pool.append(self._spawn())

        while remaining > 0:
            # Hand chunks to idle workers.
            for worker in self._pool:
                if worker.state == "idle" and todo:
                    indices = todo.popleft()
                    try:
                        worker.send.send((indices, [samples[i] for i in indices]))
                    except OSError:
                        todo.appendleft(indices)
                        self._replace(worker)
                        break
                    worker.state = "busy"
                    worker.pending = deque(indices)
                    worker.last_progress = time.monotonic()
            active = [w for w in self._pool if w.state in ("starting", "busy")]
            if not active:
                if start_failures >= self.max_start_failures or not self._pool:
                    for i in range(n):
                        if results[i] is None:
                            settle(
                                i, RewardResult.error(f"{self.name}: reward worker could not start: {last_failure}")
                            )
                    break
                continue
            now = time.monotonic()
            deadlines = [
                (w.started_at + self.startup_timeout_s)
                if w.state == "starting"
                else (w.last_progress + self.timeout_s)
                for w in active
            ]
            by_conn = {w.recv: w for w in active}
            ready = wait(list(by_conn), timeout=max(0.0, min(deadlines) - now))
            for conn in ready:
                worker = by_conn[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    code = worker.proc.wait(timeout=10) if worker.proc.poll() is None else worker.proc.returncode
                    if worker.state == "starting":
                        start_failed(worker, f"worker exited during start-up (exit code {code})")
                    else:
                        lose(worker, RewardResult.error(f"{self.name}: worker process died (exit code {code})"))
                    continue
                if worker.state == "starting":
                    if isinstance(msg, tuple) and msg and msg[0] == "ready":
                        worker.state = "idle"
                    else:
                        start_failed(worker, str(msg[1]) if isinstance(msg, tuple) and len(msg) > 1 else repr(msg))
                    continue
                if msg is None:
                    worker.state = "idle"
                    worker.pending.clear()
                    continue
                index, result = msg
                if worker.pending and worker.pending[0] == index:
                    worker.pending.popleft()
                worker.last_progress = time.monotonic()
                settle(index, result)
            now = time.monotonic()
            for worker in [w for w in self._pool if w.state in ("starting", "busy")]:
                if worker.state == "starting" and now - worker.started_at >= self.startup_timeout_s:
                    start_failed(worker, f"worker not ready after {self.startup_timeout_s:g} s")
                elif worker.state == "busy" and now - worker.last_progress >= self.timeout_s:
                    self.killed += 1
                    lose(
                        worker,
                        RewardResult.timeout(
                            f"{self.name}: scoring took longer than {self.timeout_s:g} s; worker killed and replaced"
                        ),
                    )
        return [r if r is not None else RewardResult.error(f"{self.name}: no result") for r in results]

    def close(self) -> None:
        """Stop the workers. Safe to call twice."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for worker in pool:
            try:
                worker.send.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for worker in pool:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._kill(worker)
        self.reward.close()

    def __del__(self) -> None:
        try:
            if not self._closed and self._pool:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"PooledReward({self.reward!r}, workers={self.workers}, timeout_s={self.timeout_s:g})"


def bounded_reward(reward: Reward, *, workers: int = 2, timeout_s: float = 10.0, **pool_options: object) -> Reward:
    """``reward`` bounded in time and memory per sample wherever it is called from.

    A reward that is bounded by construction (``reward.bounded`` is true: server-backed rewards with deadlines) or
    already pooled is returned as it is. A composition that contains such a reward keeps it and has its other parts
    bounded one by one; any other reward (a composition of CPU-bound rewards included) is wrapped whole in a
    :class:`PooledReward`, whose workers have a hard per-sample kill after ``timeout_s`` and a memory cap.

    Args:
        reward: The reward.
        workers: Worker processes per pool.
        timeout_s: Per-sample time bound in the pool.
        **pool_options: Further :class:`PooledReward` options (``memory_limit_mb``, ``chunk_size``, ...).

    Returns:
        The bounded reward (``reward`` itself when it already is).
    """
    from nemotron_plugins.rewards.compose import _Composite

    if isinstance(reward, PooledReward) or getattr(reward, "bounded", False):
        return reward
    if isinstance(reward, _Composite) and _contains_bounded(reward):
        reward.children = [
            bounded_reward(child, workers=workers, timeout_s=timeout_s, **pool_options) for child in reward.children
        ]
        return reward
    return PooledReward(reward, workers=workers, timeout_s=timeout_s, **pool_options)  # type: ignore[arg-type]


def _contains_bounded(reward: Reward) -> bool:
    if isinstance(reward, PooledReward) or getattr(reward, "bounded", False):
        return True
    return any(_contains_bounded(child) for child in getattr(reward, "children", ()))
