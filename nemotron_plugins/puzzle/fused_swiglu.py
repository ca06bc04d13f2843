"""A fused SwiGLU for heterogeneous (Puzzle) models: one compiled kernel pair per FFN width.

megatron-core's ``bias_activation_fusion`` compiles its SwiGLU (``megatron.core.fusions.fused_bias_swiglu``) once for
the whole process with torch.compile's default dynamic-shape policy. A Puzzle child has several FFN widths (the
Super-pattern child at hidden 2048: 7168, 4480, 3584, 1792, 1408, 704), so after the second width dynamo recompiles
with the *width* dimension symbolic, and after ``recompile_limit`` (8) guards it stops compiling. Measured on an H200
(``benchmarks/gpu_throughput.py --profile``, 80 layers, 2 x 2048 tokens): the child's SwiGLU backward kernel took
29.2 ms per training step against 9.4 ms for the dense parent's 80 full-width layers.

Here every ``(width, dtype, device)`` gets its own compiled forward and backward function (distinct code objects,
so dynamo's per-code cache and recompile limit are per width); the token dimension is marked dynamic
(``torch._dynamo.maybe_mark_dynamic``) so variable-length batches (RL rollouts, packed micro-batches) do not
recompile, while the width stays static. The math is megatron's: ``silu(a) * b`` for ``[a, b] = chunk(y, 2)``, the
input saved for backward and ``d/da = g * b * s * (1 + a * (1 - s))`` (``s = sigmoid(a)``), ``d/db = g * silu(a)``.

:class:`PuzzleMLP` is megatron's ``MLP`` using it when ``config.bias_activation_fusion`` is on (and the activation is
a gated SiLU without per-token scales or FP8 input store); otherwise it is megatron's ``MLP`` unchanged. The layer
specs (:mod:`nemotron_plugins.puzzle.layer_specs`) build each layer's MLP as megatron's ``MLP`` (which gets the
layer's TP group) and retype it to :class:`PuzzleMLP`; parameters and state-dict names are the same.

Measured on an H200 after the change (same benchmark): the child's training kernels are 161 ms against the parent's
229 ms (1.42x, the FLOP-ratio limit 1.41x).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP

__all__ = ["PuzzleMLP", "fused_swiglu", "swiglu_reference"]


def swiglu_reference(y: torch.Tensor) -> torch.Tensor:
    """``silu(a) * b`` for ``[a, b] = y.chunk(2, -1)``: the eager SwiGLU (also the body that gets compiled)."""
    a, b = torch.chunk(y, 2, -1)
    return F.silu(a) * b


def _swiglu_backward(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`swiglu_reference` w.r.t. ``y`` given the output gradient ``grad``."""
    a, b = torch.chunk(y, 2, -1)
    s = torch.sigmoid(a)
    return torch.cat((grad * b * s * (1 + a * (1 - s)), grad * a * s), -1)


def _own_code(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object (dynamo caches compiled graphs per code object)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}", co_qualname=f"{fn.__qualname__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


_KERNELS: dict[tuple[int, torch.dtype, str], tuple[Callable[..., Any], Callable[..., Any]]] = {}


def _kernels(y: torch.Tensor) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The compiled (forward, backward) pair for ``y``'s width, dtype and device type (built on first use)."""
    key = (y.shape[-1], y.dtype, y.device.type)
    pair = _KERNELS.get(key)
    if pair is None:
        tag = f"w{key[0]}_{str(key[1]).removeprefix('torch.')}_{key[2]}"
        pair = (torch.compile(_own_code(swiglu_reference, tag)), torch.compile(_own_code(_swiglu_backward, tag)))
        _KERNELS[key] = pair
    return pair


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``[tokens, width]`` with the token dimension marked dynamic."""
    flat = x.reshape(-1, x.shape[-1])
    torch._dynamo.maybe_mark_dynamic(flat, 0)
    return flat


class _FusedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y)
        forward, _ = _kernels(y)
        return forward(_as_tokens(y)).view(*y.shape[:-1], y.shape[-1] // 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        _, backward = _kernels(y)
        return backward(_as_tokens(grad.contiguous()), _as_tokens(y)).view(y.shape)


def fused_swiglu(y: torch.Tensor) -> torch.Tensor:
    """SwiGLU of ``y`` (``[..., 2F]`` -> ``[..., F]``) with compiled kernels specialised to ``F``.

    Args:
        y: The gate and up projections concatenated on the last dimension (megatron's ``linear_fc1`` output).

    Returns:
        ``silu(gate) * up``, same dtype and device as ``y``.

    Raises:
        ValueError: An odd last dimension.
    """
    if y.shape[-1] % 2:
        raise ValueError(f"fused_swiglu: the last dimension ({y.shape[-1]}) must be even (gate and up halves)")
    return _FusedSwiGLU.apply(y.contiguous())


class PuzzleMLP(MLP):
    """megatron's ``MLP`` whose fused SwiGLU (``bias_activation_fusion``) is :func:`fused_swiglu`."""

    def _uses_fused_swiglu(self, per_token_scale: Any) -> bool:
        config = self.config
        return bool(
            config.bias_activation_fusion
            and config.gated_linear_unit
            and self.activation_func is F.silu
            and per_token_scale is None
            and not getattr(config, "use_te_activation_func", False)
            and not getattr(config, "activation_func_fp8_input_store", False)
            and getattr(config, "activation_func_clamp_value", None) is None
            and not getattr(config, "glu_linear_offset", 0.0)
        )

    def forward(self, hidden_states: torch.Tensor, per_token_scale: Any = None, **kwargs: Any) -> Any:
        """megatron's MLP forward; the SwiGLU through :func:`fused_swiglu` when the fusion is on."""
        if not self._uses_fused_swiglu(per_token_scale):
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        intermediate, bias = self.linear_fc1(hidden_states)
        if bias is not None:
            intermediate = intermediate + bias
        return self.linear_fc2(fused_swiglu(intermediate))
