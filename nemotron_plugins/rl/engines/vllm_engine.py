"""vLLM rollouts on GPU, colocated with Megatron training, weights refreshed from the Megatron shards after updates.

How the LN-Ultra GRPO run generated: vLLM on the training GPUs (optionally in FP8), weights copied from the Megatron
policy after every update. This engine does that through vLLM's documented offline API:

* start: ``vllm.LLM(model=<HF checkpoint dir>, tensor_parallel_size=..., gpu_memory_utilization=..., dtype=...,
  quantization="fp8" | None, enable_sleep_mode=True, seed=...)`` on a checkpoint the trainer exported once with
  :func:`nemotron_plugins.puzzle.hf_checkpoint.export_hf_checkpoint` (vLLM loads ``DeciLMForCausalLM`` /
  ``nemotron-nas`` and ``LlamaForCausalLM`` natively);
* generate: ``LLM.generate([{"prompt_token_ids": ids}, ...], SamplingParams(n=..., temperature=..., top_p=...,
  max_tokens=..., stop=[...], seed=..., logprobs=0, include_stop_str_in_output=True))``; each
  ``CompletionOutput`` gives ``token_ids``, ``text``, ``logprobs`` (one ``{token_id: Logprob}`` per token) and
  ``finish_reason``;
* refresh: :func:`megatron_to_hf_weights` streams the policy's tensors under HF names (TP shards gathered with the
  same mapping as the checkpoint exporter), and the engine hands them to the vLLM model's ``load_weights`` inside
  each worker (``LLM.collective_rpc`` / ``LLM.apply_model`` where available, the in-process driver worker
  otherwise); with FP8 the loaded bf16 weights are re-quantised by vLLM's ``process_weights_after_loading``;
* colocation: with ``enable_sleep_mode`` the engine calls ``LLM.sleep(level=1)`` after generating (weights offloaded,
  KV cache freed, so training gets the memory back) and ``LLM.wake_up()`` before the next generation or refresh.

vLLM is an optional GPU extra (``pip install 'nemotron-plugins[vllm]'``). Without it, or without CUDA, building the
engine raises :class:`VLLMUnavailableError` saying so; the CPU path is the ``megatron`` engine.

Log-probs: vLLM reports sampled-token log-probs of the raw model distribution unless its ``logprobs_mode`` engine
option asks for processed (temperature-scaled) ones; set ``VLLMEngineConfig.logprobs_mode`` accordingly on vLLM
versions that have it. The trainer's importance-sampling correction compares them with its own log-probs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nemotron_plugins.rl.engines.base import (
    Prompt,
    Rollout,
    RolloutEngine,
    RolloutGroup,
    SamplingSettings,
    check_n,
    encode_prompt,
)

logger = logging.getLogger(__name__)


class VLLMUnavailableError(RuntimeError):
    """vLLM (or a CUDA device for it) is not available here."""


@dataclass(kw_only=True, slots=True)
class VLLMEngineConfig:
    """Settings of :class:`VLLMRolloutEngine` (passed to ``vllm.LLM``)."""

    model_path: str
    """HF checkpoint directory (``config.json`` + safetensors) of the policy, e.g. written by ``export_hf_checkpoint``."""
    tokenizer_path: str | None = None
    """Tokenizer directory; default ``model_path``."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallelism (LN-Ultra generation: TP8)."""
    gpu_memory_utilization: float = 0.4
    """Fraction of GPU memory vLLM may take; colocated with training it must leave room for the trainer."""
    dtype: str = "bfloat16"
    """Weight/activation dtype of generation."""
    fp8: bool = False
    """Generate with vLLM's online FP8 quantisation (``quantization="fp8"``); LN-Ultra's rollouts ran in FP8, 1.8x
    faster than bf16. Pair with ``GRPOConfig.importance_sampling_correction``."""
    max_model_len: int | None = None
    """Longest prompt + completion; ``None`` uses the checkpoint's ``max_position_embeddings``."""
    enable_sleep_mode: bool = True
    """Offload weights and free the KV cache between rollouts (colocated training)."""
    enforce_eager: bool = False
    """Disable CUDA graphs (faster start, slower decoding)."""
    seed: int = 0
    """Engine seed (per-request seeds come from the sampling settings)."""
    logprobs_mode: str | None = None
    """vLLM's ``logprobs_mode`` (e.g. ``"processed_logprobs"``) on versions that support it; ``None`` omits it."""
    llm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Further ``vllm.LLM`` keyword arguments."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if not self.model_path:
            raise ValueError("VLLMEngineConfig.model_path must name an HF checkpoint directory")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"VLLMEngineConfig.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"VLLMEngineConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )

    def llm_arguments(self) -> dict[str, Any]:
        """The keyword arguments for ``vllm.LLM``."""
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "tokenizer": self.tokenizer_path or self.model_path,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            "enable_sleep_mode": self.enable_sleep_mode,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
        }
        if self.fp8:
            kwargs["quantization"] = "fp8"
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.logprobs_mode is not None:
            kwargs["logprobs_mode"] = self.logprobs_mode
        kwargs.update(self.llm_kwargs)
        return kwargs


def import_vllm() -> Any:
    """Import vLLM or raise :class:`VLLMUnavailableError` with what to do instead."""
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise VLLMUnavailableError(
            f"the 'vllm' rollout engine needs vLLM, which is not importable here ({exc}). Install the GPU extra "
            "(pip install 'nemotron-plugins[vllm]') on a CUDA machine, or use the 'megatron' rollout engine, which "
            "runs on CPU."
        ) from exc


def megatron_to_hf_weights(
    model: Any, cfg: Any, *, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream the Megatron policy's weights under Hugging Face (DeciLM / Llama) names, the format vLLM loads.

    Uses the checkpoint exporter's mapping (:mod:`nemotron_plugins.puzzle.hf_checkpoint`): fused QKV split into
    q/k/v per layer's KV heads, ``linear_fc1`` split into gate/up, linear replacements to ``linear_attn`` /
    ``linear_mlp``, vocabulary padding dropped. Tensor-parallel shards are all-gathered over megatron's TP group (every
    TP rank must iterate); every TP rank yields the full tensors. With pipeline parallelism each stage yields only its
    own layers (vLLM's ``load_weights`` accepts partial updates).

    Args:
        model: A ``GPTModel``, a wrapper of one (DDP), or a list of model chunks.
        cfg: The :class:`~nemotron_plugins.puzzle.block_config.PuzzleModelConfig` the model was built from.
        dtype: Cast each yielded tensor (e.g. ``torch.bfloat16``); ``None`` keeps the training dtype.

    Yields:
        ``(hf_name, tensor)`` pairs, detached.
    """
    from nemotron_plugins.puzzle.hf_checkpoint import (
        EMBEDDING_NAME,
        FINAL_NORM_NAME,
        OUTPUT_NAME,
        ParallelRanks,
        megatron_to_hf_tensors,
        plan_megatron_tensors,
    )
    from nemotron_plugins.puzzle.model import unwrap_model

    ranks = ParallelRanks.from_megatron()
    chunks = model if isinstance(model, (list, tuple)) else [model]
    for chunk in chunks:
        chunk = unwrap_model(chunk)
        state = {k: v for k, v in chunk.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}
        layers = [int(layer.layer_number) - 1 for layer in chunk.decoder.layers] if hasattr(chunk, "decoder") else []
        plans = plan_megatron_tensors(
            cfg,
            layers=layers,
            has_embedding=EMBEDDING_NAME in state,
            has_final_norm=FINAL_NORM_NAME in state,
            has_output_layer=OUTPUT_NAME in state,
            model_keys=set(state),
        )
        for plan in plans:
            if not plan.export:
                continue
            local = state[plan.megatron_name].detach()
            if plan.kind == "replicated":
                shards = [local]
            elif ranks.tp_size == 1:
                shards = [local]
            else:
                shards = [torch.empty_like(local) for _ in range(ranks.tp_size)]
                torch.distributed.all_gather(shards, local.contiguous(), group=ranks.tp_group)
            for name, tensor in megatron_to_hf_tensors(plan, shards, cfg).items():
                yield name, (tensor.to(dtype) if dtype is not None else tensor)


def request_output_to_rollouts(output: Any, prompt_ids: list[int], eos_token_ids: Sequence[int]) -> list[Rollout]:
    """Convert one vLLM ``RequestOutput`` into :class:`Rollout` objects (pure; no vLLM import needed).

    Reads the documented fields: ``output.outputs[k].token_ids``, ``.text``, ``.logprobs`` (a list with one
    ``{token_id: Logprob(logprob=...)}`` mapping per generated token, or ``None``) and ``.finish_reason``.
    """
    rollouts = []
    for completion in sorted(output.outputs, key=lambda c: getattr(c, "index", 0)):
        ids = [int(t) for t in completion.token_ids]
        logprobs = None
        if completion.logprobs is not None:
            logprobs = []
            for tok, entry in zip(ids, completion.logprobs, strict=True):
                value = entry[tok]
                logprobs.append(float(getattr(value, "logprob", value)))
        reason = "length" if completion.finish_reason == "length" else "stop"
        text = completion.text
        rollouts.append(
            Rollout(
                prompt_ids=list(prompt_ids),
                completion_ids=ids,
                completion_text=text,
                logprobs=logprobs,
                finish_reason=reason,
            )
        )
    return rollouts


class VLLMRolloutEngine(RolloutEngine):
    """Generate rollouts with vLLM on GPU (see the module docstring).

    Args:
        config: Engine settings (or pass its fields as keyword arguments).
        tokenizer: Tokenizer for text / chat prompts (default: vLLM's own tokenizer of ``model_path``).
        puzzle_config: The policy's architecture, needed by :meth:`update_weights` when it is given a Megatron model.
        default_sampling: Defaults for omitted sampling arguments and for :meth:`generate`.

    Raises:
        VLLMUnavailableError: vLLM is not installed or no CUDA device is visible.
    """

    name = "vllm"

    def __init__(
        self,
        config: VLLMEngineConfig | None = None,
        *,
        tokenizer: Any = None,
        puzzle_config: Any = None,
        default_sampling: SamplingSettings | None = None,
        **config_fields: Any,
    ) -> None:
        super().__init__(default_sampling)
        if config is None:
            config = VLLMEngineConfig(**config_fields)
        elif config_fields:
            raise TypeError("pass either config or its fields, not both")
        config.validate()
        self.config = config
        self.puzzle_config = puzzle_config
        self._vllm = import_vllm()
        if not torch.cuda.is_available():
            raise VLLMUnavailableError(
                "the 'vllm' rollout engine needs a CUDA GPU and none is visible; use the 'megatron' engine on CPU"
            )
        self.llm = self._vllm.LLM(**config.llm_arguments())
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_ids: tuple[int, ...] = (int(eos),) if eos is not None else ()
        self._asleep = False

    # ------------------------------------------------------------------------------------------------ colocation
    def sleep(self) -> None:
        """Free GPU memory for training (weights offloaded to CPU, KV cache dropped)."""
        if self.config.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        """Bring weights and KV cache back before generating or loading weights."""
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # ------------------------------------------------------------------------------------------------ interface
    def rollout(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[RolloutGroup]:
        """Sample ``n`` completions per prompt with ``LLM.generate``; sleeps afterwards when sleep mode is on."""
        check_n(n)
        s = self.sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop, seed=seed)
        prompt_ids = [encode_prompt(self.tokenizer, p, i) for i, p in enumerate(prompts)]
        params = self._vllm.SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_new_tokens,
            stop=list(s.stop) or None,
            seed=s.seed,
            logprobs=0,
            include_stop_str_in_output=True,
        )
        self.wake_up()
        try:
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        finally:
            self.sleep()
        return [
            RolloutGroup(prompt_index=i, prompt=p, rollouts=request_output_to_rollouts(out, ids, self.eos_token_ids))
            for i, (p, ids, out) in enumerate(zip(prompts, prompt_ids, outputs, strict=True))
        ]

    def update_weights(
        self,
        state_dict: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | None = None,
        *,
        model: Any = None,
        **kwargs: Any,
    ) -> None:
        """Load new policy weights into vLLM.

        Args:
            state_dict: HF-named tensors (mapping or ``(name, tensor)`` pairs); or
            model: the Megatron policy, converted with :func:`megatron_to_hf_weights` (needs ``puzzle_config``).
        """
        if (state_dict is None) == (model is None):
            raise ValueError("update_weights needs exactly one of state_dict (HF names) or model (Megatron)")
        if model is not None:
            if self.puzzle_config is None:
                raise ValueError("update_weights(model=...) needs the engine's puzzle_config to map Megatron names")
            weights = list(megatron_to_hf_weights(model, self.puzzle_config, dtype=getattr(torch, self.config.dtype)))
        else:
            weights = list(state_dict.items()) if isinstance(state_dict, Mapping) else list(state_dict)
        self.wake_up()
        fp8 = self.config.fp8

        def load(vllm_model: Any) -> int:
            vllm_model.load_weights(weights=weights)
            if fp8:  # re-quantise the freshly loaded bf16 weights
                from vllm.model_executor.model_loader.utils import process_weights_after_loading

                params = next(vllm_model.parameters())
                process_weights_after_loading(vllm_model, None, params.device)
            return len(weights)

        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(load)
        else:  # older in-process engines
            executor = self.llm.llm_engine.model_executor
            load(executor.driver_worker.worker.model_runner.model)
        logger.info("vllm engine: loaded %d tensors from the trainer", len(weights))

    def close(self) -> None:
        """Drop the vLLM engine (frees its GPU memory once collected)."""
        self.llm = None
