"""Start and stop torch.distributed plus megatron-core's model-parallel groups (TP / PP / CP / DP), on CPU or GPU.

* :func:`init_distributed` reads the usual launcher variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``, as set by ``torchrun``), picks ``nccl`` when CUDA is present and ``gloo``
  otherwise (where it also turns on the :mod:`~nemotron_plugins.runtime.cpu` adapter), initialises the process group,
  megatron's ``parallel_state`` and the model-parallel RNG seeds. Without launcher variables it starts a
  one-process group on a free local port, so single-process runs and unit tests need no setup.
* :func:`destroy_distributed` undoes it (safe to call when nothing is initialised); :func:`distributed_context` is
  the context-manager form.
* :func:`run_local_processes` runs a function in N local processes that already form a process group (spawned
  interpreters, gloo): the way tests exercise TP / PP on a CPU machine.

Example (two CPU processes, TP=2)::

    from nemotron_plugins.runtime.config import ParallelConfig
    from nemotron_plugins.runtime.distributed import init_distributed, run_local_processes

    def work(rank: int) -> int:
        ctx = init_distributed(ParallelConfig(tensor_model_parallel_size=2))
        return ctx.tp_rank

    run_local_processes(work, nprocs=2)  # -> [0, 1]
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing
import os
import pickle
import socket
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nemotron_plugins.runtime.config import ParallelConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "barrier",
    "DistributedError",
    "destroy_distributed",
    "distributed_context",
    "ensure_distributed",
    "find_free_port",
    "get_context",
    "init_distributed",
    "run_local_processes",
    "validate_parallel_config",
]


class DistributedError(RuntimeError):
    """A parallel layout that does not fit the world, or a failure in a local worker process."""


@dataclass(kw_only=True, slots=True)
class DistributedContext:
    """Where this process sits in the parallel layout."""

    rank: int
    """Global rank."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this machine (the GPU index on GPU machines)."""
    backend: str
    """``"gloo"`` or ``"nccl"``."""
    device: torch.device
    """Device this process computes on (``cpu`` or ``cuda:<local_rank>``)."""
    tp_size: int
    """Tensor-parallel size."""
    pp_size: int
    """Pipeline-parallel size."""
    cp_size: int
    """Context-parallel size."""
    dp_size: int
    """Data-parallel size."""
    tp_rank: int
    """Rank within the tensor-parallel group."""
    pp_rank: int
    """Pipeline stage of this process."""
    cp_rank: int
    """Rank within the context-parallel group."""
    dp_rank: int
    """Rank within the data-parallel group."""
    cpu_adapter_active: bool
    """Whether :mod:`nemotron_plugins.runtime.cpu` was activated for this run."""
    owns_process_group: bool
    """Whether :func:`init_distributed` created the torch process group (and :func:`destroy_distributed` ends it)."""

    @property
    def is_first_stage(self) -> bool:
        """Whether this process holds the first pipeline stage."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        """Whether this process holds the last pipeline stage."""
        return self.pp_rank == self.pp_size - 1


_context: DistributedContext | None = None


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def validate_parallel_config(parallel: ParallelConfig, world_size: int) -> int:
    """Check that ``parallel`` fits ``world_size`` processes.

    Returns:
        The data-parallel size.

    Raises:
        DistributedError: naming the field that does not fit and what would.
    """
    sizes = {
        "tensor_model_parallel_size": parallel.tensor_model_parallel_size,
        "pipeline_model_parallel_size": parallel.pipeline_model_parallel_size,
        "context_parallel_size": parallel.context_parallel_size,
    }
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DistributedError(f"ParallelConfig.{name} must be a positive integer, got {value!r}")
    model_parallel = (
        parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size * parallel.context_parallel_size
    )
    if world_size % model_parallel:
        raise DistributedError(
            f"world size {world_size} is not divisible by TP x PP x CP = {parallel.tensor_model_parallel_size} x "
            f"{parallel.pipeline_model_parallel_size} x {parallel.context_parallel_size} = {model_parallel}; "
            f"launch a multiple of {model_parallel} processes or reduce the parallel sizes"
        )
    dp = world_size // model_parallel
    if parallel.data_parallel_size is not None and parallel.data_parallel_size != dp:
        raise DistributedError(
            f"ParallelConfig.data_parallel_size={parallel.data_parallel_size} but world size {world_size} / "
            f"(TP x PP x CP = {model_parallel}) gives {dp}; set it to {dp} or None"
        )
    if parallel.sequence_parallel and parallel.tensor_model_parallel_size == 1:
        raise DistributedError("ParallelConfig.sequence_parallel=True needs tensor_model_parallel_size > 1")
    if parallel.pipeline_layout is not None:
        if len(parallel.pipeline_layout) != parallel.pipeline_model_parallel_size:
            raise DistributedError(
                f"ParallelConfig.pipeline_layout has {len(parallel.pipeline_layout)} entries but "
                f"pipeline_model_parallel_size is {parallel.pipeline_model_parallel_size}; give one layer count per stage"
            )
        if any(not isinstance(n, int) or n < 0 for n in parallel.pipeline_layout):
            raise DistributedError(
                f"ParallelConfig.pipeline_layout must hold non-negative layer counts, got {parallel.pipeline_layout}"
            )
    return dp


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(
    parallel: ParallelConfig | None = None,
    *,
    backend: str | None = None,
    seed: int | None = 1234,
    timeout_s: float = 600.0,
) -> DistributedContext:
    """Initialise torch.distributed and megatron-core's parallel groups for ``parallel``.

    If a torch process group already exists (e.g. created by a launcher), it is reused; megatron's groups are
    (re)built. Calling it twice without :func:`destroy_distributed` in between raises.

    Args:
        parallel: TP / PP / CP sizes (default: all 1). DP is what is left of the world.
        backend: ``"gloo"`` or ``"nccl"``; default ``nccl`` with CUDA, else ``gloo``.
        seed: Seed for :func:`megatron.core.tensor_parallel.model_parallel_cuda_manual_seed` (the data-parallel
            seed on the default generator, per-TP-rank seeds in megatron's RNG tracker); ``None`` leaves RNGs alone.
        timeout_s: Collective timeout.

    Returns:
        The :class:`DistributedContext` of this process.

    Raises:
        DistributedError: bad launcher variables, a layout that does not fit the world, or double initialisation.
    """
    global _context
    from megatron.core import parallel_state, tensor_parallel

    from nemotron_plugins.runtime import cpu

    if _context is not None or parallel_state.model_parallel_is_initialized():
        raise DistributedError("distributed is already initialised; call destroy_distributed() first")
    parallel = parallel or ParallelConfig()
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if backend not in ("gloo", "nccl"):
        raise DistributedError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and not use_cuda:
        raise DistributedError("backend 'nccl' needs CUDA; use 'gloo' on CPU")

    owns_group = False
    if torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
    else:
        rank = _env_int("RANK", 0)
        world_size = _env_int("WORLD_SIZE", 1)
        local_rank = _env_int("LOCAL_RANK", rank)
        if not 0 <= rank < world_size:
            raise DistributedError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
        if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
            init_method = "env://"
        elif world_size == 1:
            init_method = f"tcp://127.0.0.1:{find_free_port()}"
        else:
            raise DistributedError(
                f"WORLD_SIZE={world_size} but MASTER_ADDR/MASTER_PORT are not set; launch with torchrun "
                "or use run_local_processes()"
            )
    validate_parallel_config(parallel, world_size)

    adapter_active = False
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        adapter_active = cpu.activate()
        device = torch.device("cpu")

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend=backend,
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        owns_group = True
    try:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            context_parallel_size=parallel.context_parallel_size,
            distributed_timeout_minutes=max(1, int(timeout_s // 60)),
        )
        if seed is not None:
            tensor_parallel.model_parallel_cuda_manual_seed(seed)
    except BaseException:
        parallel_state.destroy_model_parallel()
        if owns_group:
            torch.distributed.destroy_process_group()
        if adapter_active:
            cpu.deactivate()
        raise

    _context = DistributedContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        backend=backend,
        device=device,
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        pp_size=parallel_state.get_pipeline_model_parallel_world_size(),
        cp_size=parallel_state.get_context_parallel_world_size(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        cp_rank=parallel_state.get_context_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        cpu_adapter_active=adapter_active,
        owns_process_group=owns_group,
    )
    logger.info(
        "distributed ready: rank %d/%d backend=%s TP=%d PP=%d CP=%d DP=%d",
        rank,
        world_size,
        backend,
        _context.tp_size,
        _context.pp_size,
        _context.cp_size,
        _context.dp_size,
    )
    return _context


def get_context() -> DistributedContext | None:
    """The context from the last :func:`init_distributed`, or ``None``."""
    return _context


def destroy_distributed() -> None:
    """Tear down megatron's parallel groups, the process group (if we created it) and the CPU adapter (if we
    activated it). Safe to call when nothing is initialised."""
    global _context
    from megatron.core import parallel_state

    from nemotron_plugins.runtime import cpu

    ctx, _context = _context, None
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized() and (ctx is None or ctx.owns_process_group):
        torch.distributed.destroy_process_group()
    if ctx is not None and ctx.cpu_adapter_active:
        cpu.deactivate()


@contextlib.contextmanager
def distributed_context(parallel: ParallelConfig | None = None, **kwargs: Any) -> Iterator[DistributedContext]:
    """:func:`init_distributed` on entry, :func:`destroy_distributed` on exit."""
    ctx = init_distributed(parallel, **kwargs)
    try:
        yield ctx
    finally:
        destroy_distributed()


def world_rank() -> tuple[int, int]:
    """``(world size, global rank)`` of the default process group; ``(1, 0)`` in a plain single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def barrier() -> None:
    """``torch.distributed.barrier()`` when a process group is up (no-op in a plain single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def ensure_distributed(parallel: ParallelConfig | None = None, **kwargs: Any) -> Iterator[DistributedContext]:
    """The current :class:`DistributedContext` if one is set up (a caller or a test owns it and tears it down),
    otherwise :func:`distributed_context` for the duration: how trainers run both standalone and inside a launcher."""
    ctx = get_context()
    if ctx is not None:
        yield ctx
        return
    with distributed_context(parallel, **kwargs) as owned:
        yield owned


def _worker(
    fn: Callable[..., Any],
    rank: int,
    nprocs: int,
    port: int,
    args: tuple[Any, ...],
    results: Any,
    threads: int,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
    )
    torch.set_num_threads(threads)
    try:
        value = fn(rank, *args)
        # Plain pickle bytes: torch's multiprocessing reductions would share tensor storage through file descriptors
        # served by this process, which may have exited by the time the parent unpickles.
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # noqa: BLE001 - report every failure to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            destroy_distributed()


def run_local_processes(
    fn: Callable[..., Any],
    nprocs: int,
    args: Sequence[Any] = (),
    *,
    timeout_s: float = 300.0,
    threads_per_process: int = 1,
) -> list[Any]:
    """Run ``fn(rank, *args)`` in ``nprocs`` spawned local processes and return their results by rank.

    Each process gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` as torchrun sets
    them, so ``fn`` just calls :func:`init_distributed`. ``fn`` must be importable by the children (a module-level
    function) and return something picklable. Distributed state left over by ``fn`` is destroyed afterwards.

    Args:
        fn: The function to run; called as ``fn(rank, *args)``.
        nprocs: Number of processes.
        args: Extra positional arguments (picklable).
        timeout_s: Give up (and kill the workers) after this many seconds.
        threads_per_process: ``torch.set_num_threads`` in each worker.

    Returns:
        ``[result of rank 0, result of rank 1, ...]``.

    Raises:
        DistributedError: If a worker raised (the message holds its traceback), died, or timed out.
    """
    if nprocs < 1:
        raise DistributedError(f"nprocs must be >= 1, got {nprocs}")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    port = find_free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(fn, rank, nprocs, port, tuple(args), results, threads_per_process),
            name=f"nemotron-local-rank{rank}",
        )
        for rank in range(nprocs)
    ]
    for proc in procs:
        proc.start()
    outputs: dict[int, Any] = {}
    failures: list[str] = []
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    try:
        while len(outputs) + len(failures) < nprocs:
            if not results.empty():
                rank, ok, value = results.get()
                if ok:
                    outputs[rank] = pickle.loads(value)  # noqa: S301 - bytes from our own worker process
                else:
                    failures.append(f"rank {rank} failed:\n{value}")
                    break
                continue
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead and results.empty():
                names = ", ".join(f"{p.name} (exit code {p.exitcode})" for p in dead)
                failures.append(f"worker process died without a result: {names}")
                break
            if datetime.datetime.now() > deadline:
                failures.append(f"timed out after {timeout_s:.0f} s waiting for {nprocs - len(outputs)} worker(s)")
                break
            for p in procs:
                p.join(timeout=0.05)
    finally:
        for proc in procs:
            proc.join(timeout=5 if not failures else 0.5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if failures:
        raise DistributedError("\n".join(failures))
    return [outputs[r] for r in range(nprocs)]
