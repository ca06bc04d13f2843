"""The reward worker process: ``python -m nemotron_plugins.rewards.pool_worker READ_FD WRITE_FD``.

Protocol (pickled messages over two pipes, see :mod:`nemotron_plugins.rewards.pool`):

* parent -> worker, first: ``{"reward": bytes, "preload": [module, ...], "memory_limit_mb": int | None}``
* worker -> parent: ``("ready", pid)`` once imports are done, the reward is unpickled and its optional
  ``warmup()`` has run,
  or ``("failed", message)`` when it cannot start
* parent -> worker: ``(indices, samples)``; worker -> parent: ``(index, RewardResult)`` per sample, then ``None``
* parent -> worker: ``None`` to stop. End of file on the read pipe (parent gone) stops it too.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent exits, so a worker stuck in C code never outlives it."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _limit_memory(extra_mb: int | None) -> None:
    if not extra_mb:
        return
    try:
        import resource

        with open("/proc/self/statm") as f:
            vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vm_bytes + int(extra_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError, ImportError):
        pass


def serve(conn_in: Connection, conn_out: Connection) -> int:
    """Run the worker loop until told to stop; returns the exit code."""
    from nemotron_plugins.rewards.base import RewardResult

    try:
        init = conn_in.recv()
        for module in init.get("preload", ()):
            try:
                importlib.import_module(module)
            except ImportError:
                pass
        reward = pickle.loads(init["reward"])
        warmup = getattr(reward, "warmup", None)
        if callable(warmup):
            warmup()
        memory_limit_mb = init.get("memory_limit_mb")
        _limit_memory(memory_limit_mb)
    except EOFError:
        return 0
    except Exception as exc:  # noqa: BLE001 - report why the worker cannot start
        conn_out.send(("failed", f"{type(exc).__name__}: {exc}"))
        return 1
    conn_out.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn_in.recv()
        except (EOFError, OSError):
            return 0
        if msg is None:
            return 0
        indices, samples = msg
        for index, sample in zip(indices, samples, strict=True):
            try:
                result = reward.score([sample])[0]
            except MemoryError:
                result = RewardResult.error(f"{reward.name}: out of memory in worker (bound +{memory_limit_mb} MiB)")
            except RecursionError:
                result = RewardResult.invalid(f"{reward.name}: input nested too deeply to score")
            except Exception as exc:  # noqa: BLE001 - one bad sample must not kill the worker
                result = RewardResult.error(f"{reward.name}: {type(exc).__name__}: {exc}"[:500])
            try:
                conn_out.send((index, result))
            except (BrokenPipeError, OSError):
                return 0
        try:
            conn_out.send(None)
        except (BrokenPipeError, OSError):
            return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``pool_worker READ_FD WRITE_FD``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m nemotron_plugins.rewards.pool_worker READ_FD WRITE_FD", file=sys.stderr)
        return 2
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    conn_in = Connection(int(args[0]), writable=False)
    conn_out = Connection(int(args[1]), readable=False)
    return serve(conn_in, conn_out)


if __name__ == "__main__":
    sys.exit(main())
