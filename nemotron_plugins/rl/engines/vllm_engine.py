"""vLLM rollouts on GPU, colocated with Megatron training (SPMD under torchrun), refitted from the Megatron shards.

How the LN-Ultra GRPO run generated: vLLM on the training GPUs (in FP8), weights copied from the Megatron policy
after every update, generation laid out apart from training (training TP8 PP18 CP2 DP2, generation TP8 DP72). This
engine does that with vLLM's offline API:

* **SPMD, one engine per generation-TP group**: every torchrun rank builds ``vllm.LLM(...,
  distributed_executor_backend="external_launcher", tensor_parallel_size=T)``. vLLM then runs one worker in this
  process, on this rank's GPU, and groups the world into tensor-parallel groups of ``T`` consecutive ranks; the
  remaining factor ``world / T`` is vLLM's "external" data parallelism (every group generates independently). So
  generation TP and DP are independent of the training layout (:class:`VLLMLayout`); the caller gives each
  generation-DP rank its prompts (:meth:`VLLMLayout.shard`), the same prompts and seed on every rank of a TP
  group. Without a process group (a single process) the engine runs vLLM's in-process single-GPU executor.
  Either way the engine core stays in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so weights are handed to
  the worker as tensors, never pickled.
* **sleep / wake around training**: with ``enable_sleep_mode`` the engine calls ``LLM.sleep(level=...)`` after
  generating (KV cache freed, weights offloaded at level 1 or dropped at level 2) and wakes only what the next step
  needs: ``wake_up(tags=["weights"])`` before a refit, ``wake_up(tags=["kv_cache"])`` before generating.
* **refit in buckets**: :meth:`VLLMRolloutEngine.update_weights` takes the Megatron model (or HF-named tensors) and
  streams it with :func:`nemotron_plugins.rl.refit.stream_hf_weights`: every pipeline stage's tensors, under the
  names and (padded) shapes of the HF checkpoint vLLM loaded, in buckets of ``refit_bucket_bytes``. Each bucket goes
  to the worker's model through ``LLM.collective_rpc`` (in-process) and the model's own ``load_weights``, which
  shards each full tensor for this rank's TP slice. Then the prefix cache is reset (its blocks hold the old policy's
  keys and values).
* **FP8 generation**: ``quantization="fp8"`` (online dynamic FP8 from the bf16 checkpoint). A refit must reach the
  quantized kernels: vLLM's layerwise reload (``vllm.model_executor.model_loader.reload``:
  ``initialize_layerwise_reload(model)`` before the first bucket restores each layer's checkpoint-format parameters,
  ``load_weights`` processes -- re-quantizes -- a layer as soon as all of its weights arrived, and
  ``finalize_layerwise_reload(model, model_config)`` after the last bucket processes the rest, attention included).
  This replaced calling ``process_weights_after_loading(model, None, device)``, which current vLLM dereferences. A
  vLLM without the layerwise reload is refused for ``fp8=True`` when the engine is built.
* **prefix caching**: on by default (``enable_prefix_caching``); GRPO's ``n`` samples of one prompt share its
  prefill.

vLLM is an optional GPU extra (``pip install 'nemotron-plugins[vllm]'``). Without it, or without CUDA, building the
engine raises :class:`VLLMUnavailableError` saying so; the CPU path is the ``megatron`` engine.

Log-probs: vLLM reports sampled-token log-probs of the raw model distribution unless its ``logprobs_mode`` engine
option asks for processed (temperature-scaled) ones; set ``VLLMEngineConfig.logprobs_mode`` accordingly on vLLM
versions that have it. The trainer's importance-sampling correction compares them with its own log-probs.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from nemotron_plugins.rl.engines.base import (
    EngineLayout,
    Prompt,
    Rollout,
    RolloutEngine,
    RolloutGroup,
    SamplingSettings,
    check_n,
    encode_prompt,
)
from nemotron_plugins.rl.refit import DEFAULT_BUCKET_BYTES, stream_hf_weights

logger = logging.getLogger(__name__)

LAYERWISE_RELOAD_MODULE = "vllm.model_executor.model_loader.reload"
"""Where vLLM keeps ``initialize_layerwise_reload`` / ``finalize_layerwise_reload`` (the FP8-correct refit)."""


class VLLMUnavailableError(RuntimeError):
    """vLLM (or a CUDA device for it, or a feature of it the settings need) is not available here."""


@dataclass(kw_only=True, slots=True)
class VLLMEngineConfig:
    """Settings of :class:`VLLMRolloutEngine` (passed to ``vllm.LLM``)."""

    model_path: str
    """HF checkpoint directory (``config.json`` + safetensors) of the policy, e.g. written by ``export_hf_checkpoint``."""
    tokenizer_path: str | None = None
    """Tokenizer directory; default ``model_path``."""
    tensor_parallel_size: int = 1
    """Generation tensor parallelism (LN-Ultra: TP8); generation DP is the world size divided by it."""
    gpu_memory_utilization: float = 0.4
    """Fraction of GPU memory vLLM may take; colocated with training it must leave room for the trainer."""
    dtype: str = "bfloat16"
    """Weight/activation dtype of generation (refitted tensors are cast to it)."""
    fp8: bool = False
    """Generate with vLLM's online FP8 quantisation (``quantization="fp8"``); LN-Ultra's rollouts ran in FP8, 1.8x
    faster than bf16. Refits re-quantize through vLLM's layerwise reload. Pair with
    ``GRPOConfig.importance_sampling_correction``."""
    max_model_len: int | None = None
    """Longest prompt + completion; ``None`` uses the checkpoint's ``max_position_embeddings``."""
    enable_sleep_mode: bool = True
    """Free the KV cache and offload (or drop) weights between rollouts, so colocated training gets the memory."""
    sleep_level: int = 1
    """``LLM.sleep`` level: 1 offloads weights to CPU memory, 2 drops them (a refit must come before the next
    generation; the engine refuses to generate from dropped weights)."""
    enable_prefix_caching: bool = True
    """vLLM's automatic prefix caching (the ``n`` samples of a prompt share its prefill); reset after every refit."""
    refit_bucket_bytes: int = DEFAULT_BUCKET_BYTES
    """Largest bucket of HF tensors one refit step materialises and hands to vLLM (see :mod:`nemotron_plugins.rl.refit`)."""
    enforce_eager: bool = False
    """Disable CUDA graphs (faster start, slower decoding)."""
    seed: int = 0
    """Engine seed; identical on every rank of a generation-TP group (SPMD sampling must agree)."""
    logprobs_mode: str | None = None
    """vLLM's ``logprobs_mode`` (e.g. ``"processed_logprobs"``) on versions that support it; ``None`` omits it."""
    llm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Further ``vllm.LLM`` keyword arguments (may not override the ones above)."""

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
        if self.sleep_level not in (1, 2):
            raise ValueError(f"VLLMEngineConfig.sleep_level must be 1 or 2, got {self.sleep_level!r}")
        bucket = self.refit_bucket_bytes
        if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
            raise ValueError(f"VLLMEngineConfig.refit_bucket_bytes must be a positive integer, got {bucket!r}")
        refit_dtype(self.dtype)
        clash = sorted(set(self.llm_kwargs) & _OWNED_LLM_ARGUMENTS)
        if clash:
            raise ValueError(
                f"VLLMEngineConfig.llm_kwargs may not set {clash}: they are set from the config's own fields "
                "(model_path, tensor_parallel_size, fp8, enable_sleep_mode, enable_prefix_caching, ...)"
            )

    def llm_arguments(self, layout: VLLMLayout | None = None) -> dict[str, Any]:
        """The keyword arguments for ``vllm.LLM`` on a rank of ``layout`` (default: a single process)."""
        layout = layout or VLLMLayout()
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "tokenizer": self.tokenizer_path or self.model_path,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "dtype": self.dtype,
            "enable_sleep_mode": self.enable_sleep_mode,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enforce_eager": self.enforce_eager,
            "seed": self.seed,
        }
        if layout.world_size > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.fp8:
            kwargs["quantization"] = "fp8"
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.logprobs_mode is not None:
            kwargs["logprobs_mode"] = self.logprobs_mode
        kwargs.update(self.llm_kwargs)
        return kwargs


_OWNED_LLM_ARGUMENTS = frozenset(
    {
        "model",
        "tokenizer",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "data_parallel_size",
        "distributed_executor_backend",
        "gpu_memory_utilization",
        "dtype",
        "enable_sleep_mode",
        "enable_prefix_caching",
        "enforce_eager",
        "seed",
        "quantization",
        "max_model_len",
        "logprobs_mode",
    }
)


@dataclass(frozen=True, slots=True)
class VLLMLayout(EngineLayout):
    """:class:`~nemotron_plugins.rl.engines.base.EngineLayout` of the vLLM engines (vLLM's order: rank ``r`` is TP rank
    ``r % tp`` of generation-DP rank ``r // tp``), with the share of prompts each engine generates."""

    tp_setting: ClassVar[str] = "VLLMEngineConfig.tensor_parallel_size"

    def shard(self, n: int) -> range:
        """The contiguous, balanced share of ``n`` items (prompts) this rank's engine generates."""
        per, extra = divmod(n, self.dp_size)
        start = self.dp_rank * per + min(self.dp_rank, extra)
        return range(start, start + per + (1 if self.dp_rank < extra else 0))


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


def layerwise_reload_module() -> Any:
    """vLLM's layerwise reload module, or ``None`` when this vLLM has none."""
    try:
        module = importlib.import_module(LAYERWISE_RELOAD_MODULE)
    except ImportError:
        return None
    if not all(hasattr(module, f) for f in ("initialize_layerwise_reload", "finalize_layerwise_reload")):
        return None
    return module


def megatron_to_hf_weights(
    model: Any, cfg: Any, *, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The Megatron policy's weights as ``(hf_name, tensor)`` pairs, every pipeline stage included.

    A flat view of :func:`nemotron_plugins.rl.refit.stream_hf_weights` (a collective over the model-parallel group;
    every rank must iterate it to the end): the names and shapes of the exported HF checkpoint, FFN widths padded
    as the export pads them.

    Args:
        model: A ``GPTModel``, a wrapper of one (DDP), or a list of model chunks.
        cfg: The :class:`~nemotron_plugins.puzzle.block_config.PuzzleModelConfig` the model was built from.
        dtype: Cast each yielded tensor (e.g. ``torch.bfloat16``); ``None`` keeps the training dtype.
    """
    for bucket in stream_hf_weights(model, config=cfg, dtype=dtype):
        yield from bucket


def refit_dtype(name: str) -> torch.dtype | None:
    """The torch dtype refitted tensors are cast to for vLLM's ``dtype`` setting (``"auto"``: keep theirs).

    Raises:
        ValueError: not a floating dtype name (naming ``VLLMEngineConfig.dtype``).
    """
    if name == "auto":
        return None
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"VLLMEngineConfig.dtype must be 'auto' or a floating dtype name, got {name!r}")
    return dtype


def hf_buckets(
    weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group HF-named tensors into buckets of at most ``bucket_bytes`` (a larger tensor alone), lazily."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


# Worker-side steps of a refit, run by ``LLM.collective_rpc`` as ``fn(worker, *args)`` in this process (the engine
# core is in-process): module-level functions holding no tensors of their own.
def _worker_model(worker: Any) -> Any:
    return worker.model_runner.model


def _begin_refit(worker: Any, layerwise: bool) -> None:
    if layerwise:
        layerwise_reload_module().initialize_layerwise_reload(_worker_model(worker))


def _load_bucket(worker: Any, bucket: list[tuple[str, torch.Tensor]]) -> int:
    _worker_model(worker).load_weights(weights=bucket)
    return len(bucket)


def _finish_refit(worker: Any, layerwise: bool) -> None:
    if layerwise:
        layerwise_reload_module().finalize_layerwise_reload(_worker_model(worker), worker.model_runner.model_config)


@dataclass(kw_only=True, slots=True)
class RefitReport:
    """What one :meth:`VLLMRolloutEngine.update_weights` did on this rank."""

    tensors: int = 0
    """HF tensors loaded."""
    buckets: int = 0
    """Buckets handed to vLLM."""
    bytes: int = 0
    """Bytes of all tensors loaded."""
    max_bucket_bytes: int = 0
    """The largest bucket (the refit's transient memory beyond one Megatron tensor's conversion)."""
    requantized: bool = False
    """Whether vLLM's layerwise reload re-processed the weights (FP8)."""


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
    """Generate rollouts with vLLM on GPU, one engine per generation-TP group (see the module docstring).

    Every rank of the process group builds one (SPMD); every rank must then call :meth:`rollout` (with its
    generation-DP shard of the prompts, :attr:`layout`) and :meth:`update_weights` together.

    Args:
        config: Engine settings (or pass its fields as keyword arguments).
        tokenizer: Tokenizer for text / chat prompts (default: vLLM's own tokenizer of ``model_path``).
        puzzle_config: The policy's architecture, needed by :meth:`update_weights` when it is given a Megatron model.
        default_sampling: Defaults for omitted sampling arguments and for :meth:`generate`.

    Raises:
        VLLMUnavailableError: vLLM is not installed, no CUDA device is visible, or ``fp8=True`` on a vLLM without the
            layerwise reload that re-quantizes refitted weights.
        ValueError: a bad setting (named), e.g. a TP size that does not divide the world size.
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
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed and config.tensor_parallel_size > 1:
            raise ValueError(
                f"VLLMEngineConfig.tensor_parallel_size={config.tensor_parallel_size} needs that many torchrun ranks: "
                "the colocated engine runs one vLLM worker per rank (external launcher), and no process group is "
                "initialised here"
            )
        self.layout = VLLMLayout.current(config.tensor_parallel_size)
        self._vllm = import_vllm()
        if not torch.cuda.is_available():
            raise VLLMUnavailableError(
                "the 'vllm' rollout engine needs a CUDA GPU and none is visible; use the 'megatron' engine on CPU"
            )
        self._layerwise = config.fp8
        if config.fp8 and layerwise_reload_module() is None:
            raise VLLMUnavailableError(
                f"VLLMEngineConfig.fp8=True: refitting an FP8 engine needs vLLM's layerwise reload "
                f"({LAYERWISE_RELOAD_MODULE}.initialize_layerwise_reload / finalize_layerwise_reload), which this "
                f"vLLM ({getattr(self._vllm, '__version__', 'unknown version')}) lacks; upgrade vLLM or set fp8=False"
            )
        # The engine core must live in this process: the external launcher requires it, and collective_rpc then
        # hands tensors to the worker without pickling them.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.llm = self._vllm.LLM(**config.llm_arguments(self.layout))
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_ids: tuple[int, ...] = (int(eos),) if eos is not None else ()
        self._asleep: set[str] = set()  # what is asleep: "weights", "kv_cache"
        self._weights_dropped = False
        self._wake_takes_tags = "tags" in inspect.signature(self.llm.wake_up).parameters
        self.last_refit: RefitReport | None = None

    # ------------------------------------------------------------------------------------------------ colocation
    def sleep(self) -> None:
        """Free GPU memory for training: KV cache dropped, weights offloaded (level 1) or dropped (level 2)."""
        if self.config.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=self.config.sleep_level)
            self._asleep = {"weights", "kv_cache"}
            self._weights_dropped = self.config.sleep_level == 2

    def wake_up(self, tags: Sequence[str] = ("weights", "kv_cache")) -> None:
        """Bring back what ``tags`` names (``"weights"``, ``"kv_cache"``) if it is asleep."""
        wanted = [t for t in tags if t in self._asleep]
        if not wanted:
            return
        if self._wake_takes_tags:
            self.llm.wake_up(tags=wanted)
            self._asleep -= set(wanted)
        else:  # vLLM before tagged wake-up: everything at once
            self.llm.wake_up()
            self._asleep = set()

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
        """Sample ``n`` completions per prompt with ``LLM.generate``; sleeps afterwards when sleep mode is on.

        ``prompts`` are this engine's prompts (its generation-DP share); every rank of the generation-TP group must
        pass the same prompts and seed.

        Raises:
            RuntimeError: the weights were dropped by a level-2 sleep and no refit has loaded new ones.
        """
        check_n(n)
        s = self.sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop, seed=seed)
        prompt_ids = [encode_prompt(self.tokenizer, p, i) for i, p in enumerate(prompts)]
        if self._weights_dropped:
            raise RuntimeError(
                "the vLLM engine slept at VLLMEngineConfig.sleep_level=2 (weights dropped) and no update_weights has "
                "loaded the policy since; refit before generating, or use sleep_level=1"
            )
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
        self.wake_up(("weights", "kv_cache"))
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
    ) -> RefitReport:
        """Load new policy weights into vLLM, bucket by bucket (a collective: every rank calls it).

        Args:
            state_dict: HF-named tensors as the exported checkpoint holds them (mapping or ``(name, tensor)`` pairs);
                or
            model: this rank's Megatron policy (chunks), streamed with
                :func:`~nemotron_plugins.rl.refit.stream_hf_weights` (needs ``puzzle_config``); every pipeline
                stage's tensors reach every rank's engine.
            **kwargs: none are accepted (named in the error).

        Returns:
            What was loaded (also kept as :attr:`last_refit`).
        """
        if kwargs:
            raise TypeError(f"update_weights got unexpected arguments {sorted(kwargs)}")
        if (state_dict is None) == (model is None):
            raise ValueError("update_weights needs exactly one of state_dict (HF names) or model (Megatron)")
        dtype = refit_dtype(self.config.dtype)
        bucket_bytes = self.config.refit_bucket_bytes
        if model is not None:
            if self.puzzle_config is None:
                raise ValueError("update_weights(model=...) needs the engine's puzzle_config to map Megatron names")
            buckets = stream_hf_weights(model, config=self.puzzle_config, bucket_bytes=bucket_bytes, dtype=dtype)
        else:
            pairs = state_dict.items() if isinstance(state_dict, Mapping) else state_dict
            buckets = hf_buckets(((n, t if dtype is None else t.to(dtype)) for n, t in pairs), bucket_bytes)
        report = RefitReport(requantized=self._layerwise)
        self.wake_up(("weights",))
        self.llm.collective_rpc(_begin_refit, args=(self._layerwise,))
        for bucket in buckets:
            nbytes = sum(t.numel() * t.element_size() for _, t in bucket)
            self.llm.collective_rpc(_load_bucket, args=(bucket,))
            report.tensors += len(bucket)
            report.buckets += 1
            report.bytes += nbytes
            report.max_bucket_bytes = max(report.max_bucket_bytes, nbytes)
            del bucket
        self.llm.collective_rpc(_finish_refit, args=(self._layerwise,))
        self._weights_dropped = False
        if self.config.enable_prefix_caching:
            self.llm.reset_prefix_cache()  # cached blocks hold the old policy's keys and values
        self.last_refit = report
        logger.info(
            "vllm engine: refit %d tensors (%.1f MB) in %d buckets", report.tensors, report.bytes / 1e6, report.buckets
        )
        return report

    def close(self) -> None:
        """Drop the vLLM engine (frees its GPU memory once collected)."""
        self.llm = None
