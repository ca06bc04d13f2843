"""The generation worker: a rollout engine at its own layout, the prompts split over generation replicas, refit.

The controller (:mod:`nemotron_plugins.rl.controller`) asks :class:`GenerationWorker` for ``n`` completions of a list
of prompts and gets :class:`Samples` (identical on every rank); after each policy update it calls
:meth:`GenerationWorker.refit` with the policy worker. A :class:`GenerationLayout` says which ranks form one
generation replica and how the prompts are split over the replicas (generation data parallelism); the engine behind
it is any registered rollout engine (:mod:`nemotron_plugins.rl.engines`).

Engines today:

* ``megatron`` (the CPU default) with ``generation.megatron_layout="training"``: the policy module itself with
  megatron-core's static KV cache, so its layout is the training one (the replicas are the training data-parallel
  replicas; every TP rank of a replica decodes the same tokens from the same seed), a refit has nothing to copy, and
  a pipeline-parallel policy is refused;
* ``megatron`` with ``generation.megatron_layout="generation"``: a whole-model copy of the policy at
  ``generation.tensor_model_parallel_size`` (generation DP = world / that, whatever the training TP / PP / DP),
  refreshed after every update through the refit stream
  (:class:`~nemotron_plugins.rl.engines.megatron_engine.MegatronCopyEngine`; one more model replica of memory);
* ``vllm``: colocated, refreshed from the megatron shards after every update
  (:meth:`~nemotron_plugins.rl.engines.base.RolloutEngine.update_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nemotron_plugins.runtime.distributed import barrier

if TYPE_CHECKING:
    from nemotron_plugins.launch.recipe_config import RecipeConfig

logger = logging.getLogger(__name__)

EMBEDDED_ENGINES = ("megatron", "embedded")
"""Engines that decode with the trained module itself (no weights to copy), unless built at a generation layout of
their own (``generation.megatron_layout="generation"``: an engine with a ``layout``)."""
TRAINER_ENGINES = (*EMBEDDED_ENGINES, "vllm")
"""Engines the trainer drives."""


def all_gather_objects(obj: Any, group: Any = None) -> list[Any]:
    """``obj`` of every rank of ``group`` (default: the world), in rank order; ``[obj]`` without a group."""
    if not torch.distributed.is_initialized():
        return [obj]
    size = torch.distributed.get_world_size(group)
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    torch.distributed.all_gather_object(out, obj, group=group)
    return out


def mix_seed(*parts: int) -> int:
    """A deterministic seed from integer parts (run seed, step, replica...)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 7919) % (2**62)
    return value


@dataclass(frozen=True, slots=True)
class GenerationLayout:
    """Which generation replica this rank belongs to and the group that exchanges rollouts between replicas."""

    dp_size: int
    """Generation replicas (prompts are split over them)."""
    dp_rank: int
    """This rank's replica."""
    group: Any = None
    """Process group of this rank and its peers in the other replicas (``None``: the world)."""

    @classmethod
    def colocated(cls) -> GenerationLayout:
        """The layout of an engine that decodes with the training module: the training data-parallel replicas, each
        context-parallel rank a replica of its own (megatron's ``parallel_state``: the DP x CP group; CP is a training
        split, generation runs whole sequences, see :func:`~nemotron_plugins.puzzle.context_parallel.
        context_parallel_off`); one replica without a distributed run."""
        if not torch.distributed.is_initialized():
            return cls(dp_size=1, dp_rank=0)
        from megatron.core import parallel_state as ps

        return cls(
            dp_size=ps.get_data_parallel_world_size(with_context_parallel=True),
            dp_rank=ps.get_data_parallel_rank(with_context_parallel=True),
            group=ps.get_data_parallel_group(with_context_parallel=True),
        )

    @classmethod
    def of_engine(cls, engine: Any) -> GenerationLayout:
        """The layout an engine generates at: its own (``engine.layout``, e.g. vLLM's or the megatron copy engine's
        TP groups of consecutive ranks with generation DP = world / generation TP, independent of training DP) when it
        has one, else
        :meth:`colocated`. A collective when the engine has its own layout (its peer group is created on every rank)."""
        own = getattr(engine, "layout", None)
        if own is None:
            return cls.colocated()
        return cls(dp_size=own.dp_size, dp_rank=own.dp_rank, group=own.peer_group())


def engine_settings(config: RecipeConfig, tokenizer_size: int | None = None) -> dict[str, Any]:
    """What the rollout engine is built with, from ``config.generation``."""
    gen = config.generation
    if gen.engine == "megatron":
        settings: dict[str, Any] = {
            "engine": "megatron",
            "max_batch_size": gen.batch_size,
            "vocab_size": tokenizer_size,
        }
        if gen.megatron_layout == "generation":  # its own copy at the generation TP (else the policy module itself)
            settings["tensor_parallel_size"] = gen.tensor_model_parallel_size
        return settings
    llm_kwargs: dict[str, Any] = {}
    if gen.max_num_seqs is not None:
        llm_kwargs["max_num_seqs"] = gen.max_num_seqs
    if gen.kv_cache_dtype != "auto":
        llm_kwargs["kv_cache_dtype"] = {"fp8": "fp8", "bfloat16": "auto", "float16": "auto", "float32": "auto"}[
            gen.kv_cache_dtype
        ]
    return {
        "engine": "vllm",
        "tensor_parallel_size": gen.tensor_model_parallel_size,
        "gpu_memory_utilization": gen.gpu_memory_utilization,
        "dtype": config.model.params_dtype,
        "fp8": gen.fp8,
        "max_model_len": config.model.seq_length,
        "seed": config.seed,
        "llm_kwargs": llm_kwargs,
    }


def build_engine(config: RecipeConfig, model: Any, model_config: Any, tokenizer: Any) -> Any:
    """The rollout engine of ``config.generation.engine`` for this rank's policy ``model`` (unwrapped)."""
    settings = engine_settings(config, len(tokenizer))
    if settings.pop("engine") == "megatron":
        from nemotron_plugins.rl.engines.megatron_engine import (
            MegatronCopyEngine,
            MegatronEngineConfig,
            MegatronRolloutEngine,
        )

        tp = settings.pop("tensor_parallel_size", None)
        if tp is None:
            return MegatronRolloutEngine(model, tokenizer, config=MegatronEngineConfig(**settings))
        return MegatronCopyEngine(
            model,
            tokenizer,
            puzzle_config=model_config,
            tensor_parallel_size=tp,
            seq_length=config.model.seq_length,
            config=MegatronEngineConfig(**settings),
        )
    # vLLM colocated with training: an HF export of the initial policy to start from, refreshed after every step.
    from nemotron_plugins.puzzle.hf_checkpoint import export_hf_checkpoint
    from nemotron_plugins.rl.engines.vllm_engine import VLLMEngineConfig, VLLMRolloutEngine

    path = Path(config.output_dir or os.path.join("runs", config.name)) / "hf_policy"
    export_hf_checkpoint(model, model_config, path)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        tokenizer.save_pretrained(str(path))
    barrier()
    return VLLMRolloutEngine(
        VLLMEngineConfig(model_path=str(path), **settings), tokenizer=tokenizer, puzzle_config=model_config
    )


@dataclass(kw_only=True, slots=True)
class Samples:
    """Completions of a list of prompts, prompt-major (``n`` consecutive entries per prompt)."""

    prompt_index: list[int]
    """Index of each completion's prompt in the list given to :func:`distributed_rollout`."""
    completion_ids: list[list[int]]
    """Sampled token ids (end-of-sequence token included when sampled)."""
    logprobs: list[list[float]]
    """The engine's sampling log-prob of each token."""
    finished: list[bool]
    """Whether the completion ended (eos / stop string) rather than hitting the length limit."""


def distributed_rollout(
    engine: Any,
    prompts: Sequence[Sequence[int]],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    layout: GenerationLayout | None = None,
) -> Samples:
    """Sample ``n`` completions per prompt: each generation data-parallel replica (``layout``, default
    :meth:`GenerationLayout.colocated`) takes a contiguous share of the prompts (seeded by ``seed`` and its replica
    index), then the shares are all-gathered over the replicas, so every rank returns all samples."""
    layout = layout or GenerationLayout.colocated()
    dp, dp_rank = layout.dp_size, layout.dp_rank
    lo, hi = len(prompts) * dp_rank // dp, len(prompts) * (dp_rank + 1) // dp
    local = Samples(prompt_index=[], completion_ids=[], logprobs=[], finished=[])
    if hi > lo:
        groups = engine.rollout(
            [list(p) for p in prompts[lo:hi]],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=mix_seed(seed, dp_rank),
        )
        for group in groups:
            for r in group.rollouts:
                local.prompt_index.append(lo + group.prompt_index)
                local.completion_ids.append(list(r.completion_ids or []))
                local.logprobs.append(list(r.logprobs or []))
                local.finished.append(r.finish_reason == "stop")
    if dp == 1:
        return local
    return exchange_samples(local, group=layout.group)


def exchange_samples(local: Samples, group: Any = None) -> Samples:
    """Every replica's :class:`Samples` of ``group``, concatenated in rank order, exchanged as tensors.

    Two collectives: the ``(samples, longest completion)`` sizes, then one all-gather of a padded int64 block
    (prompt index, length, finished flag, token ids) and one of the float32 log-probs, each padded to the largest
    replica's sizes; nothing is pickled. Only the ranks of ``group`` (the generation replicas that hold different
    prompts) take part.
    """
    device = (
        torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend(group) == "nccl" else None
    )
    n = len(local.completion_ids)
    longest = max((len(c) for c in local.completion_ids), default=0)
    sizes = torch.tensor([n, longest], dtype=torch.long, device=device)
    world = torch.distributed.get_world_size(group)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    torch.distributed.all_gather(all_sizes, sizes, group=group)
    rows = max(int(t[0]) for t in all_sizes)
    width = max(int(t[1]) for t in all_sizes)
    ints = torch.zeros(rows, 3 + width, dtype=torch.long)
    floats = torch.zeros(rows, width, dtype=torch.float32)
    for i, (ids, lps) in enumerate(zip(local.completion_ids, local.logprobs, strict=True)):
        ints[i, 0] = local.prompt_index[i]
        ints[i, 1] = len(ids)
        ints[i, 2] = int(local.finished[i])
        ints[i, 3 : 3 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        if lps:
            floats[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
    ints, floats = ints.to(device), floats.to(device)
    all_ints = [torch.empty_like(ints) for _ in range(world)]
    all_floats = [torch.empty_like(floats) for _ in range(world)]
    torch.distributed.all_gather(all_ints, ints, group=group)
    torch.distributed.all_gather(all_floats, floats, group=group)
    out = Samples(prompt_index=[], completion_ids=[], logprobs=[], finished=[])
    for size, block, lp in zip(all_sizes, all_ints, all_floats, strict=True):
        block, lp = block[: int(size[0])].cpu(), lp[: int(size[0])].cpu()
        for row, row_lp in zip(block.tolist(), lp, strict=True):
            length = row[1]
            out.prompt_index.append(row[0])
            out.finished.append(bool(row[2]))
            out.completion_ids.append(row[3 : 3 + length])
            out.logprobs.append(row_lp[:length].tolist())
    return out


class GenerationWorker:
    """A rollout engine at its :class:`GenerationLayout`, behind two calls: :meth:`generate` and :meth:`refit`.

    Args:
        engine: The rollout engine (:class:`~nemotron_plugins.rl.engines.base.RolloutEngine`).
        layout: The generation replicas.
        embedded: The engine decodes with the trained module itself (:meth:`refit` has nothing to copy).
    """

    def __init__(self, engine: Any, *, layout: GenerationLayout, embedded: bool) -> None:
        self.engine = engine
        self.layout = layout
        self.embedded = embedded

    @classmethod
    def build(cls, config: RecipeConfig, policy: Any) -> GenerationWorker:
        """The engine of ``config.generation`` for ``policy`` (a :class:`~nemotron_plugins.rl.policy_worker.
        MegatronPolicyWorker`: its module, architecture and tokenizer)."""
        engine = build_engine(config, policy.module, policy.model_config, policy.tokenizer)
        # The megatron engine at the training layout decodes with the training module itself: its replicas are the
        # training DP replicas. The megatron copy engine and vLLM run one replica per generation-TP group of
        # consecutive ranks (engine.layout): prompts are split over those replicas, every rank of a group gets the
        # same share and seed.
        embedded = getattr(engine, "layout", None) is None and config.generation.engine in EMBEDDED_ENGINES
        return cls(engine, layout=GenerationLayout.of_engine(engine), embedded=embedded)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> Samples:
        """``n`` completions of every prompt, the prompts split over the replicas; every rank returns all samples.

        An embedded engine decodes whole sequences with the training module: its context parallelism is off
        meanwhile (:func:`~nemotron_plugins.puzzle.context_parallel.context_parallel_off`)."""
        from nemotron_plugins.puzzle.context_parallel import context_parallel_off

        with context_parallel_off(self.engine.model) if self.embedded else contextlib.nullcontext():
            return distributed_rollout(
                self.engine,
                prompts,
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                seed=seed,
                layout=self.layout,
            )

    def refit(self, policy: Any) -> None:
        """Bring the engine's weights to ``policy``'s (nothing to do for an embedded engine; a collective for the
        others: the refit stream runs over every training model-parallel group)."""
        if not self.embedded:
            self.engine.update_weights(model=policy.module)

    def close(self) -> None:
        """Release the engine."""
        self.engine.close()
