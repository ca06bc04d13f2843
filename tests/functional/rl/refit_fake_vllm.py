"""A minimal stand-in for the part of vLLM's interface the ``vllm`` rollout engine drives, recording every call.

It is NOT vLLM: it checks orchestration only (which ``LLM`` arguments, sleep / wake order, ``collective_rpc`` steps,
bucket sizes and names, that every pipeline stage's weights arrive, the layerwise-reload calls of an FP8 refit, the
TP slice each rank's worker would keep). Generation, CUDA, kernels and FP8 numerics never run here.

Modelled on vLLM's offline API: ``LLM(**kwargs)``, ``LLM.generate(prompts, sampling_params, use_tqdm=...)``,
``LLM.sleep(level=...)``, ``LLM.wake_up(tags=...)``, ``LLM.collective_rpc(method, args=...)`` (a callable is run as
``method(worker, *args)``, the worker exposing ``model_runner.model`` / ``model_runner.model_config``),
``LLM.reset_prefix_cache()``, ``LLM.get_tokenizer()``, ``SamplingParams(**kwargs)``, and
``vllm.model_executor.model_loader.reload.{initialize,finalize}_layerwise_reload``.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch

from nemotron_plugins.rl.refit import hf_tp_slice

TP_DIM_BY_SUFFIX = {
    "o_proj.weight": 1,
    "down_proj.weight": 1,
}


def tp_dim(name: str) -> int | None:
    """How vLLM's layers split an HF tensor over TP (norms replicated, row-parallel on dim 1, the rest on dim 0)."""
    if name.endswith("norm.weight"):
        return None
    return next((d for suffix, d in TP_DIM_BY_SUFFIX.items() if name.endswith(suffix)), 0)


class FakeModel:
    """Records each ``load_weights`` call (one bucket) and keeps this rank's TP slice of every tensor."""

    def __init__(self, events: list, tp_rank: int, tp_size: int) -> None:
        self.events = events
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.buckets: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = []
        self.full: dict[str, torch.Tensor] = {}
        self.shard: dict[str, torch.Tensor] = {}

    def load_weights(self, weights: Any) -> set[str]:
        bucket = list(weights)
        self.events.append(("load_weights", len(bucket), sum(t.numel() * t.element_size() for _, t in bucket)))
        self.buckets.append([(n, tuple(t.shape), t.dtype) for n, t in bucket])
        for name, tensor in bucket:
            self.full[name] = tensor.detach().clone()
            self.shard[name] = hf_tp_slice(tensor, tp_dim(name), self.tp_rank, self.tp_size, name=name).clone()
        return {n for n, _ in bucket}


class FakeLLM:
    """``vllm.LLM``: one per rank; the in-process worker holds a :class:`FakeModel`."""

    instances: list[FakeLLM] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.events: list = [("init", kwargs)]
        tp = int(kwargs.get("tensor_parallel_size", 1))
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        # vLLM's layout: ExternalDP x DP x PP x TP, TP innermost
        self.tp_rank, self.dp_rank = rank % tp, rank // tp
        self.model = FakeModel(self.events, self.tp_rank, tp)
        self.worker = SimpleNamespace(model_runner=SimpleNamespace(model=self.model, model_config="<model_config>"))
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return SimpleNamespace(eos_token_id=2)

    def sleep(self, level: int = 1) -> None:
        self.events.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.events.append(("wake_up", tuple(tags) if tags is not None else None))

    def collective_rpc(self, method: Any, timeout: float | None = None, args: tuple = (), kwargs: dict | None = None):
        assert callable(method), "the engine passes module-level callables (in-process engine core)"
        self.events.append(("rpc", method.__name__))
        return [method(self.worker, *args, **(kwargs or {}))]

    def reset_prefix_cache(self) -> bool:
        self.events.append(("reset_prefix_cache",))
        return True

    def generate(self, prompts: list[dict], sampling_params: Any, use_tqdm: bool = True) -> list[Any]:
        self.events.append(("generate", [list(p["prompt_token_ids"]) for p in prompts], sampling_params.kwargs))
        n = sampling_params.kwargs["n"]
        outputs = []
        for p in prompts:
            ids = list(reversed(p["prompt_token_ids"]))[:3] + [2]
            completions = [
                SimpleNamespace(
                    index=k,
                    token_ids=ids,
                    text="x" * len(ids),
                    logprobs=[{t: SimpleNamespace(logprob=-0.5)} for t in ids],
                    finish_reason="stop",
                )
                for k in range(n)
            ]
            outputs.append(SimpleNamespace(outputs=completions))
        return outputs


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


def _initialize_layerwise_reload(model: FakeModel) -> None:
    model.events.append(("initialize_layerwise_reload",))


def _finalize_layerwise_reload(model: FakeModel, model_config: Any) -> None:
    model.events.append(("finalize_layerwise_reload", model_config))


@contextlib.contextmanager
def fake_vllm(*, layerwise_reload: bool = True) -> Iterator[type[FakeLLM]]:
    """The fake ``vllm`` (and, unless ``layerwise_reload`` is False, its reload module) in ``sys.modules`` for the
    duration; whatever ``vllm`` modules were imported before (a real vLLM on a GPU machine) come back afterwards."""
    FakeLLM.instances = []
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = FakeSamplingParams
    vllm.__version__ = "0.0.fake"
    modules = {"vllm": vllm}
    if layerwise_reload:
        executor = types.ModuleType("vllm.model_executor")
        loader = types.ModuleType("vllm.model_executor.model_loader")
        reload = types.ModuleType("vllm.model_executor.model_loader.reload")
        reload.initialize_layerwise_reload = _initialize_layerwise_reload
        reload.finalize_layerwise_reload = _finalize_layerwise_reload
        vllm.model_executor, executor.model_loader, loader.reload = executor, loader, reload
        modules |= {m.__name__: m for m in (executor, loader, reload)}
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n == "vllm" or n.startswith("vllm.")}
    sys.modules.update(modules)
    try:
        yield FakeLLM
    finally:
        for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
            del sys.modules[name]
        sys.modules.update(saved)
