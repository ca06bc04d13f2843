"""Run megatron-core on CPU: one small, reversible adapter for the places where megatron-core assumes CUDA.

megatron-core 0.16 hard-codes CUDA in about 200 places (``torch.cuda.current_device()`` as a device argument,
``device="cuda"`` in factory calls, ``.cuda()``, CUDA RNG states in the tensor-parallel RNG tracker,
``torch.cuda.current_stream()`` in DDP buffers, a ``'torch.cuda.FloatTensor'`` assertion in gradient clipping).
Rather than forking those modules, :func:`activate` installs three things, all undone by :func:`deactivate`:

1. **A global torch function mode** (:class:`CudaToCpuMode`) that rewrites CUDA device arguments to CPU:
   ``device="cuda"`` / ``"cuda:N"`` / ``torch.device("cuda")`` / a bare integer device index in any torch call,
   positional devices in ``Tensor.to``, ``Tensor.cuda()`` (returns the tensor unchanged), ``pin_memory=True`` and
   ``Tensor.pin_memory()`` (no pinning), ``Tensor.record_stream`` (nothing to record).
2. **CPU stand-ins for ``torch.cuda`` functions** that have no CPU meaning: ``current_device`` (returns
   ``torch.device("cpu")``, not an index: megatron's custom autograd functions allocate with
   ``device=torch.cuda.current_device()`` inside ``backward``, where torch function modes are not consulted, because
   the mode is suspended while it handles the ``torch.autograd.backward`` call itself), ``set_device``,
   ``synchronize``, streams and events (inert objects), the memory statistics (zeros), and the RNG functions
   (``get_rng_state``, ``set_rng_state``, ``manual_seed``, ``manual_seed_all``, ``initial_seed``), which act on the
   CPU default generator: on CPU, the generator that dropout and initialisation draw from *is* the "device" RNG.
3. **CPU stand-ins for megatron-core helpers**: the tensor-parallel RNG-state functions
   ``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state`` (so ``get_cuda_rng_tracker().fork()``
   forks the CPU generator and tensor-parallel dropout stays rank-specific exactly as on GPU), and gradient
   clipping's ``clip_grad_by_total_norm_fp32`` (whose ``'torch.cuda.FloatTensor'`` assertion rejects CPU grads),
   and the ``DistributedOptimizer`` constructor, run with ``Tensor.type()`` reporting CUDA names (it sorts
   parameters by ``param.type()`` and rejects ``torch.FloatTensor``); its reduce-scatter / all-gather run on gloo.

With those, ``megatron.core.tensor_parallel.model_parallel_cuda_manual_seed`` seeds the CPU generator with the
data-parallel seed and the tracker holds the tensor-parallel seeds, as on GPU.

The adapter is:

* **a no-op where CUDA is present** (:func:`activate` logs that and returns ``False``; pass ``force=True`` only in
  tests that want the adapter on a GPU machine);
* **explicit**: it logs one line at INFO when it turns on and :func:`is_cpu_adapter_active` reports its state;
* **idempotent**: a second :func:`activate` does nothing;
* **reversible**: :func:`deactivate` restores every patched attribute and pops the function mode;
  :func:`cpu_adapter` is the context-manager form (it undoes only what it did).

Torch function modes are per thread: activate the adapter in the thread that builds and runs the model (megatron's
checkpoint writer threads only do file I/O). Tensor and pipeline parallelism on CPU run as several local processes
with the gloo backend; see :mod:`nemotron_plugins.runtime.distributed`.

Example:
    >>> from nemotron_plugins.runtime.cpu import cpu_adapter, is_cpu_adapter_active
    >>> import torch
    >>> with cpu_adapter(force=True):
    ...     torch.zeros(2, device="cuda").device.type
    'cpu'
    >>> is_cpu_adapter_active()
    False
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

__all__ = [
    "CudaToCpuMode",
    "activate",
    "cpu_adapter",
    "deactivate",
    "is_cpu_adapter_active",
    "maybe_activate",
]

_CPU = torch.device("cpu")


def _as_cpu_device(device: Any) -> Any:
    """``device`` with every CUDA spelling (string, ``torch.device``, integer index) replaced by CPU."""
    if device is None or isinstance(device, bool):
        return device
    if isinstance(device, int):
        return _CPU
    if isinstance(device, str):
        return _CPU if device.startswith("cuda") else device
    if isinstance(device, torch.device):
        return _CPU if device.type == "cuda" else device
    return device


def _is_device_like(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | torch.device):
        return True
    return isinstance(value, str) and value.split(":", 1)[0] in {"cuda", "cpu", "meta"}


class CudaToCpuMode(TorchFunctionMode):
    """A torch function mode that runs every torch call with its CUDA device arguments rewritten to CPU.

    ``Tensor.cuda()``, ``Tensor.pin_memory()`` and ``Tensor.record_stream()`` become no-ops, ``pin_memory=True``
    becomes ``False``. Everything else passes through unchanged.
    """

    _RETURN_SELF = frozenset({torch.Tensor.cuda, torch.Tensor.pin_memory})

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Iterable[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in self._RETURN_SELF:
            return args[0]
        if func is torch.Tensor.record_stream:
            return None
        if kwargs:
            if "device" in kwargs:
                kwargs = {**kwargs, "device": _as_cpu_device(kwargs["device"])}
            if kwargs.get("pin_memory"):
                kwargs = {**kwargs, "pin_memory": False}
        else:
            kwargs = {}
        if func is torch.Tensor.to and len(args) > 1 and _is_device_like(args[1]):
            args = (args[0], _as_cpu_device(args[1]), *args[2:])
        return func(*args, **kwargs)


class _CpuStream:
    """An inert stand-in for ``torch.cuda.Stream``: CPU work is synchronous, so there is nothing to order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.device = _CPU

    def wait_stream(self, stream: Any) -> None:
        """No-op."""

    def wait_event(self, event: Any) -> None:
        """No-op."""

    def record_event(self, event: Any = None) -> _CpuEvent:
        """Return a (completed) event."""
        return event if event is not None else _CpuEvent()

    def synchronize(self) -> None:
        """No-op."""

    def query(self) -> bool:
        """Always complete."""
        return True

    def __enter__(self) -> _CpuStream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _CpuEvent:
    """An inert stand-in for ``torch.cuda.Event`` (always complete)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        """No-op."""

    def wait(self, stream: Any = None) -> None:
        """No-op."""

    def synchronize(self) -> None:
        """No-op."""

    def query(self) -> bool:
        """Always complete."""
        return True

    def elapsed_time(self, other: Any) -> float:
        """Events on CPU carry no timestamps; measure wall time with :func:`time.perf_counter` instead."""
        return 0.0


_DEFAULT_STREAM = _CpuStream()


def _stream_context(stream: Any = None) -> contextlib.AbstractContextManager[Any]:
    return contextlib.nullcontext(stream)


def _cpu_get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return torch.default_generator.get_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
    torch.default_generator.set_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    torch.default_generator.manual_seed(int(seed))


def _megatron_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    state = torch.default_generator.get_state()
    return state.clone() if clone else state


def _megatron_set_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.default_generator.set_state(new_state)


def _clip_grad_by_total_norm_fp32(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    max_norm: float,
    total_norm: float,
    use_decoupled_grad: bool = False,
) -> None:
    """CPU version of megatron's ``clip_grad_by_total_norm_fp32``: scale grads in place by ``max_norm / total``."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for param in parameters:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is None:
            continue
        if grad.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"gradient clipping expects fp32 or bf16 gradients, got {grad.dtype}")
        grads.append(grad.to_local() if hasattr(grad, "to_local") else grad)
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_([g.detach() for g in grads], clip_coeff)


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


# torch.cuda attribute -> CPU stand-in.
_TORCH_CUDA_PATCHES: dict[str, Any] = {
    "current_device": lambda: _CPU,
    "set_device": _noop,
    "synchronize": _noop,
    "Stream": _CpuStream,
    "ExternalStream": type("_CpuExternalStream", (_CpuStream,), {}),
    "Event": _CpuEvent,
    "current_stream": lambda device=None: _DEFAULT_STREAM,
    "default_stream": lambda device=None: _DEFAULT_STREAM,
    "set_stream": _noop,
    "stream": _stream_context,
    "get_rng_state": _cpu_get_rng_state,
    "set_rng_state": _cpu_set_rng_state,
    "manual_seed": _cpu_manual_seed,
    "manual_seed_all": _cpu_manual_seed,
    "initial_seed": lambda: torch.default_generator.initial_seed(),
    "empty_cache": _noop,
    "memory_allocated": _zero,
    "max_memory_allocated": _zero,
    "memory_reserved": _zero,
    "max_memory_reserved": _zero,
    "reset_peak_memory_stats": _noop,
    "memory_stats": lambda *a, **k: {},
}
# (module, attribute) -> CPU stand-in, for megatron-core helpers. Modules that are missing are skipped.
_MEGATRON_PATCHES: dict[tuple[str, str], Any] = {
    ("megatron.core.tensor_parallel.random", "_get_cuda_rng_state"): _megatron_get_rng_state,
    ("megatron.core.tensor_parallel.random", "_set_cuda_rng_state"): _megatron_set_rng_state,
    ("megatron.core.optimizer.clip_grads", "clip_grad_by_total_norm_fp32"): _clip_grad_by_total_norm_fp32,
    ("megatron.core.optimizer.optimizer", "clip_grad_by_total_norm_fp32"): _clip_grad_by_total_norm_fp32,
}
_MISSING = object()


@dataclass(kw_only=True, slots=True)
class _AdapterState:
    """What :func:`activate` changed, so :func:`deactivate` can undo exactly that."""

    mode: CudaToCpuMode
    """The pushed function mode."""
    saved: list[tuple[Any, str, Any]] = field(default_factory=list)
    """``(object, attribute, original value or _MISSING)`` for every patched attribute."""


_lock = threading.RLock()
_state: _AdapterState | None = None


def is_cpu_adapter_active() -> bool:
    """Whether the CPU adapter is currently installed."""
    return _state is not None


def _distinct(value: Any, name: str) -> Any:
    """A fresh function object per patched name: torch.compile's trace rules reject one object under two names."""
    if not callable(value) or isinstance(value, type):
        return value

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        return value(*args, **kwargs)

    stand_in.__name__ = stand_in.__qualname__ = f"cpu_{name}"
    stand_in.__doc__ = f"CPU stand-in for {name} (nemotron_plugins.runtime.cpu)."
    return stand_in


def _patch(state: _AdapterState, obj: Any, name: str, value: Any) -> None:
    state.saved.append((obj, name, getattr(obj, name, _MISSING)))
    setattr(obj, name, _distinct(value, name))


def _patch_recompute(state: _AdapterState) -> None:
    """Run activation recompute under the rewrite: megatron's ``CheckpointFunction.backward`` re-runs forward code
    inside ``torch.autograd.backward``, which the function mode handles with itself switched off, so the recomputed
    forward would otherwise see ``device="cuda"`` again (e.g. megatron's default causal mask)."""
    try:
        from megatron.core.tensor_parallel.random import CheckpointFunction
    except ImportError:  # pragma: no cover - megatron-core is a dependency
        return
    original = CheckpointFunction.backward
    mode = state.mode

    def backward(ctx: Any, *grads: Any) -> Any:
        with mode:
            return original(ctx, *grads)

    state.saved.append((CheckpointFunction, "backward", CheckpointFunction.__dict__["backward"]))
    CheckpointFunction.backward = staticmethod(backward)


class _CudaTypeNamesMode(TorchFunctionMode):
    """``Tensor.type()`` (no arguments) reports CPU tensors under their CUDA names (``torch.cuda.FloatTensor``);
    ``Tensor.type(dtype)`` conversions and every other call pass through unchanged.

    Only pushed around constructors that sort parameters by those names (see :func:`_patch_distributed_optimizer`).
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Iterable[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and args[0].device.type == "cpu":
            return "torch.cuda." + result.removeprefix("torch.")
        return result


def _patch_distributed_optimizer(state: _AdapterState) -> None:
    """Let megatron's ``DistributedOptimizer`` wrap CPU parameters: its constructor sorts parameters into fp32 /
    fp16 / bf16 groups by ``param.type()`` and rejects anything but ``torch.cuda.*Tensor``; under the adapter CPU
    tensors stand in for CUDA ones, so the constructor runs with :class:`_CudaTypeNamesMode` pushed. Nothing else of
    the optimizer changes (its gradient reduce-scatter and parameter all-gather run on gloo)."""
    try:
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    except ImportError:  # pragma: no cover - megatron-core is a dependency
        return
    original = DistributedOptimizer.__dict__["__init__"]

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - replaces the constructor
        with _CudaTypeNamesMode():
            original(self, *args, **kwargs)

    state.saved.append((DistributedOptimizer, "__init__", original))
    DistributedOptimizer.__init__ = __init__


def activate(*, force: bool = False) -> bool:
    """Install the CPU adapter (see the module docstring). Idempotent.

    Args:
        force: Install it even where CUDA is available (for tests of the adapter itself).

    Returns:
        ``True`` if the adapter is active after the call, ``False`` when CUDA is present and nothing was done.
    """
    global _state
    with _lock:
        if _state is not None:
            return True
        if torch.cuda.is_available() and not force:
            logger.info("CUDA is available: the megatron-core CPU adapter stays off")
            return False
        state = _AdapterState(mode=CudaToCpuMode())
        try:
            for name, value in _TORCH_CUDA_PATCHES.items():
                _patch(state, torch.cuda, name, value)
            for (module_name, attr), value in _MEGATRON_PATCHES.items():
                try:
                    module = importlib.import_module(module_name)
                except ImportError:
                    logger.debug("CPU adapter: %s not importable, not patching %s", module_name, attr)
                    continue
                if hasattr(module, attr):
                    _patch(state, module, attr, value)
            _patch_recompute(state)
            _patch_distributed_optimizer(state)
            state.mode.__enter__()
        except BaseException:
            _restore(state)
            raise
        _state = state
        logger.info(
            "megatron-core CPU adapter active: CUDA device arguments run on CPU, torch.cuda streams/RNG/"
            "current_device and megatron's RNG-tracker, grad-clip and distributed-optimizer helpers use CPU stand-ins"
        )
        return True


def _restore(state: _AdapterState) -> None:
    for obj, name, original in reversed(state.saved):
        if original is _MISSING:
            with contextlib.suppress(AttributeError):
                delattr(obj, name)
        else:
            setattr(obj, name, original)
    state.saved.clear()


def deactivate() -> bool:
    """Remove the CPU adapter: pop its function mode and restore every patched attribute.

    Returns:
        ``True`` if an active adapter was removed, ``False`` if none was active.

    Raises:
        RuntimeError: If another torch function mode was pushed after the adapter's and is still active (modes
            must be exited in reverse order).
    """
    global _state
    with _lock:
        if _state is None:
            return False
        state = _state
        stack = torch.overrides._get_current_function_mode_stack()
        if not stack or stack[-1] is not state.mode:
            on_top = type(stack[-1]).__name__ if stack else "nothing"
            raise RuntimeError(
                f"cannot deactivate the CPU adapter: its torch function mode is not the innermost one ({on_top} "
                "is); exit modes entered after activate() first, or deactivate from the thread that activated it"
            )
        state.mode.__exit__(None, None, None)
        _restore(state)
        _state = None
        logger.info("megatron-core CPU adapter removed")
        return True


def maybe_activate() -> bool:
    """Activate the adapter when CUDA is absent; a no-op (returning ``False``) on GPU machines."""
    return activate()


@contextlib.contextmanager
def cpu_adapter(*, force: bool = False) -> Iterator[bool]:
    """Context manager form of :func:`activate` / :func:`deactivate`.

    Undoes the adapter on exit only if this block activated it (an adapter that was already on stays on).

    Yields:
        Whether the adapter is active inside the block.
    """
    was_active = is_cpu_adapter_active()
    active = activate(force=force)
    try:
        yield active
    finally:
        if active and not was_active:
            deactivate()
