"""The embedded rollout engine: sample from the Megatron policy itself, with megatron-core's KV cache.

The engine runs the trainer's own ``GPTModel`` (so :meth:`MegatronRolloutEngine.update_weights` has nothing to copy)
through megatron-core's static-batching inference path: a
:class:`megatron.core.inference.contexts.StaticInferenceContext` passed as ``inference_context=`` to
``GPTModel.forward`` makes every attention layer keep its keys and values in preallocated buffers, so each decoding
step feeds one token per sequence. It works on CPU with the :mod:`nemotron_plugins.runtime.cpu` adapter and on GPU
unchanged; heterogeneous Puzzle layers (no-op or linear attention) simply keep no cache.

Prompts of different lengths in one batch are left-padded to the longest where every core attention takes a
boolean mask (the default ``puzzle_sdpa`` spec): the padding keys are masked at prefill and at every decoding step
and positions count from each prompt's first token (RoPE scores depend only on relative positions), so the whole
batch is prefilled at once and decoding starts after the longest prompt; a completion's log-probs equal those of a
full causal forward over prompt + completion (tested to 1e-5). Elsewhere (TE or megatron's local attention) the
sequences advance in lockstep as in megatron-core's own static-batch generation: the batch is prefilled up to its
shortest prompt, then every step writes one position per sequence, taking the prompt's token where the prompt is
still running and a sampled token elsewhere (one decoding step per prompt token past the shortest prompt). Sequences
that share their prefilled tokens, as the ``n`` samples of one prompt do, share that prefill: it runs once per
distinct prefix and the KV cache rows are copied (``n`` times less prefill work). Finished sequences leave the
decoding batch: once a quarter of the cached rows have ended, the KV cache is compacted to the running rows, so a
batch whose replies end early does not decode its longest reply's length for every row. Sampling still draws for
the whole batch, so completions do not depend on when rows are dropped.

Sampling: logits / temperature, log-softmax (temperature 0: greedy arg-max); top-p keeps the smallest set of most likely tokens whose probability
reaches ``top_p`` and samples from it renormalised. The returned log-prob of a token is its log-probability under the
temperature-scaled distribution before top-p truncation (what the trainer recomputes). Tensor parallelism works
(logits are gathered; every TP rank draws the same tokens from the same seed).

Two layouts:

* :class:`MegatronRolloutEngine` decodes with the module it is given, so it generates at that module's layout (the
  training one when given the policy; a pipeline-parallel module is refused: every rank must hold the whole model);
* :class:`MegatronCopyEngine` holds its own whole-model copy of the policy at a generation TP size of its own
  (``tensor_parallel_size`` consecutive ranks per replica, generation DP = world / that; built with megatron-core
  process groups of its own, :func:`~nemotron_plugins.puzzle.model.single_stage_process_groups`) and refreshes it
  after every update through the refit stream (:func:`~nemotron_plugins.rl.refit.stream_hf_weights`, every pipeline
  stage and TP shard of the training model -> HF tensors -> the copy's TP shards), so it works for any training
  TP / PP / DP. The price is memory: one more model replica per generation-TP group (the weights only, no gradients
  or optimizer state), which is why vLLM (that sleeps and wakes around training) is the production path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nemotron_plugins.rl.engines.base import (
    EngineLayout,
    Prompt,
    Rollout,
    RolloutEngine,
    RolloutGroup,
    SamplingSettings,
    check_n,
    cut_at_stop,
    encode_prompt,
)

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class MegatronEngineConfig:
    """Settings of :class:`MegatronRolloutEngine`."""

    max_batch_size: int = 64
    """Sequences decoded together (one KV cache of this batch size); more sequences run in several batches."""
    eos_token_ids: tuple[int, ...] | None = None
    """Tokens that end a completion; ``None`` takes the tokenizer's ``eos_token_id``."""
    vocab_size: int | None = None
    """Real vocabulary size: logits of the padding ids megatron adds (vocab padded to a multiple of 128) are dropped
    before sampling. ``None`` takes ``len(tokenizer)``; without a tokenizer every logit is kept."""
    use_kv_cache: bool = True
    """Decode with megatron-core's static KV cache. False recomputes the full prefix every step (slow; kept as a
    reference path for tests and for models whose layers cannot cache)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if self.max_batch_size < 1:
            raise ValueError(f"MegatronEngineConfig.max_batch_size must be >= 1, got {self.max_batch_size}")


COMPACT_AT_RUNNING_SHARE = 0.75
"""The KV cache is compacted to the running rows once at most this share of its rows is still running (each
compaction copies the cache filled so far; 0 never compacts)."""


def _unwrap(model: Any) -> Any:
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(
                f"the megatron rollout engine needs one model chunk, got {len(model)} (virtual pipeline stages are "
                "not supported; use the vllm engine)"
            )
        model = model[0]
    return model


def _pipeline_size(model: Any) -> int:
    """Pipeline stages of ``model`` (its config's; megatron's ``parallel_state`` for a module without one)."""
    size = getattr(getattr(model, "config", None), "pipeline_model_parallel_size", None)
    if isinstance(size, int):
        return size
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_pipeline_model_parallel_world_size()
    return 1


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` [b, vocab]; return ``(tokens, logprobs)``.

    ``logprobs`` are under ``log_softmax(logits[:, :vocab_size] / temperature)`` (before top-p truncation).
    ``temperature == 0`` is greedy decoding: the arg-max token, with its log-prob at temperature 1.
    """
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    if temperature == 0:
        logp = torch.log_softmax(logits.float(), dim=-1)
        tokens = logp.argmax(dim=-1)
        return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly more likely tokens
        keep_sorted = before < top_p  # the first token is always kept
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def shared_prefixes(prompts: Sequence[Sequence[int]], length: int) -> tuple[list[int], list[int]]:
    """Group sequences by their first ``length`` tokens.

    Returns:
        ``(source, firsts)``: ``firsts[k]`` is the first sequence with the ``k``-th distinct prefix, ``source[r]``
        the index ``k`` of sequence ``r``'s prefix.

    Example:
        >>> shared_prefixes([[1, 2, 3], [1, 2, 4], [5, 6]], 2)
        ([0, 0, 1], [0, 2])
    """
    index: dict[tuple[int, ...], int] = {}
    source: list[int] = []
    firsts: list[int] = []
    for r, prompt in enumerate(prompts):
        key = tuple(prompt[:length])
        if key not in index:
            index[key] = len(firsts)
            firsts.append(r)
        source.append(index[key])
    return source, firsts


class MegatronRolloutEngine(RolloutEngine):
    """Generate rollouts with the Megatron policy.

    Args:
        model: A megatron-core ``GPTModel`` (or a one-element list of model chunks, or a DDP wrapper of one) whose
            forward ``model(input_ids, position_ids, attention_mask, inference_context=..., runtime_gather_output=...)``
            returns logits ``[b, s, vocab]``.
        tokenizer: Hugging Face tokenizer for text / chat prompts, decoding and the default eos id (optional when
            prompts are ids and ``eos_token_ids`` is given; texts are then empty).
        config: Engine settings.
        default_sampling: Defaults for omitted sampling arguments and for :meth:`generate`.
    """

    name = "megatron"

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        config: MegatronEngineConfig | None = None,
        default_sampling: SamplingSettings | None = None,
    ) -> None:
        super().__init__(default_sampling)
        self.config = config or MegatronEngineConfig()
        self.config.validate()
        self.model = _unwrap(model)
        self.tokenizer = tokenizer
        self._left_padding: bool | None = None  # decided on first use (see _left_pads)
        eos = self.config.eos_token_ids
        if eos is None and tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos = (int(tokenizer.eos_token_id),)
        self.eos_token_ids: tuple[int, ...] = tuple(eos or ())
        self.vocab_size = self.config.vocab_size
        if self.vocab_size is None and tokenizer is not None:
            self.vocab_size = len(tokenizer)
        if not self.eos_token_ids:
            logger.warning("megatron rollout engine has no eos token: completions end only at stop strings/length")

    # ------------------------------------------------------------------------------------------------ interface
    def update_weights(self, state_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """The engine samples from the trainer's model object itself: nothing to do unless ``state_dict`` is given,
        in which case it is loaded into the model (strict)."""
        if state_dict is not None:
            self.model.load_state_dict(state_dict, strict=True)

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
        """Sample ``n`` completions per prompt (see the module docstring for the exact sampling rules).

        Raises:
            ValueError: A malformed prompt, a prompt as long as the model's maximum sequence length, or a
                pipeline-parallel model.
        """
        check_n(n)
        s = self.sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop, seed=seed)
        if _pipeline_size(self.model) > 1:
            raise ValueError(
                "the megatron rollout engine decodes with a whole model on each rank; for a pipeline-parallel policy "
                "use MegatronCopyEngine (generation.megatron_layout='generation') or 'vllm'"
            )
        prompt_ids = [encode_prompt(self.tokenizer, p, i) for i, p in enumerate(prompts)]
        max_len = getattr(self.model, "max_sequence_length", None)
        for i, ids in enumerate(prompt_ids):
            if max_len is not None and len(ids) >= max_len:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; the model's max_sequence_length is {max_len}, leaving no room "
                    "to generate"
                )
        # One entry per sequence (prompt index, sample index); sorted by length so batches waste little prefill.
        seqs = [(i, j) for i in range(len(prompts)) for j in range(n)]
        seqs.sort(key=lambda ij: len(prompt_ids[ij[0]]))
        device = self._device()
        generator = torch.Generator(device=device)
        generator.manual_seed(s.seed if s.seed is not None else int(torch.randint(0, 2**62, ()).item()))

        results: dict[tuple[int, int], Rollout] = {}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                bs = self.config.max_batch_size
                for start in range(0, len(seqs), bs):
                    chunk = seqs[start : start + bs]
                    outs = self._generate_batch([prompt_ids[i] for i, _ in chunk], s, generator, max_len, device)
                    for key, out in zip(chunk, outs, strict=True):
                        results[key] = out
        finally:
            self.model.train(was_training)
        return [
            RolloutGroup(prompt_index=i, prompt=p, rollouts=[results[(i, j)] for j in range(n)])
            for i, p in enumerate(prompts)
        ]

    # ------------------------------------------------------------------------------------------------ internals
    def _device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            return torch.device("cpu")

    def _forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, context: Any, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if context is None:
            logits = self.model(tokens, positions, mask, runtime_gather_output=True)
        else:
            logits = self.model(tokens, positions, mask, inference_context=context, runtime_gather_output=True)
        return logits[:, -1, :]

    def _left_pads(self) -> bool:
        """Whether prompts of different lengths are left-padded (every core attention takes a boolean mask: the
        ``puzzle_sdpa`` spec's :class:`~nemotron_plugins.puzzle.attention.SDPACoreAttention`)."""
        if self._left_padding is None:
            from nemotron_plugins.puzzle.attention import non_sdpa_core_attention

            self._left_padding = non_sdpa_core_attention(self.model) is None
        return self._left_padding

    def _generate_batch(
        self,
        prompts: list[list[int]],
        s: SamplingSettings,
        generator: torch.Generator,
        max_len: int | None,
        device: torch.device,
    ) -> list[Rollout]:
        b = len(prompts)
        lens = torch.tensor([len(p) for p in prompts], device=device)
        budgets = [s.max_new_tokens if max_len is None else min(s.max_new_tokens, max_len - len(p)) for p in prompts]
        longest = int(lens.max().item())
        min_len = int(lens.min().item())
        # Prompts of different lengths: left-padded to the longest (masked keys, positions counted from each
        # prompt's first token) where attention takes a mask, so decoding starts after the longest prompt for all.
        left = self.config.use_kv_cache and min_len < longest and self._left_pads()
        pads = (longest - lens) if left else torch.zeros_like(lens)
        total = max(int(pads[r]) + len(p) + k for r, (p, k) in enumerate(zip(prompts, budgets, strict=True)))
        tokens = torch.zeros(b, total, dtype=torch.long, device=device)
        for r, p in enumerate(prompts):
            tokens[r, int(pads[r]) : int(pads[r]) + len(p)] = torch.tensor(p, dtype=torch.long, device=device)
        columns = torch.arange(total, device=device)
        positions = (columns.unsqueeze(0) - pads.unsqueeze(1)).clamp(min=0)
        padding = columns.unsqueeze(0) < pads.unsqueeze(1)  # [b, total]: left-padding keys, masked
        if left:
            lens = torch.full_like(lens, longest)
            min_len = longest

        completions: list[list[int]] = [[] for _ in range(b)]
        logprobs: list[list[float]] = [[] for _ in range(b)]
        texts: list[str] = [""] * b
        finish: list[str | None] = [None] * b
        eos = set(self.eos_token_ids)

        def prefill_mask(rows: torch.Tensor | slice) -> torch.Tensor | None:
            if not left:
                return None
            causal = columns[None, :min_len] > columns[:min_len, None]
            return (causal.unsqueeze(0) | padding[rows, None, :min_len]).unsqueeze(1)  # [rows, 1, sq, sk]

        context = None
        if self.config.use_kv_cache:
            from megatron.core.inference.contexts import StaticInferenceContext

            context = StaticInferenceContext(b, total)
            source, firsts = shared_prefixes([tokens[r, :min_len].tolist() for r in range(b)], min_len)
            if len(firsts) < b:
                # Sequences whose first ``min_len`` tokens are equal (the n samples of one prompt) share one
                # prefill: it runs on one row per distinct prefix, then the KV cache rows are copied to the rest.
                first_rows = torch.tensor(firsts, device=device)
                rows = torch.tensor(source, device=device)
                last = self._forward(
                    tokens[first_rows, :min_len], positions[first_rows, :min_len], context, prefill_mask(first_rows)
                )[rows]
                for key_memory, value_memory in context.key_value_memory_dict.values():
                    key_memory[:min_len, :b] = key_memory[:min_len, rows]
                    value_memory[:min_len, :b] = value_memory[:min_len, rows]
            else:
                last = self._forward(tokens[:, :min_len], positions[:, :min_len], context, prefill_mask(slice(None)))
            context.increment_sequence_len_offset(min_len)
            context.enable_decode_mode()
        else:
            last = self._forward(tokens[:, :min_len], positions[:, :min_len], None)

        active = torch.arange(b, device=device)  # the rows in the KV cache's batch slots, in order
        for t in range(min_len, total):
            sampled, sampled_lp = sample_tokens(
                last, temperature=s.temperature, top_p=s.top_p, generator=generator, vocab_size=self.vocab_size
            )
            in_prompt = t < lens
            step = torch.where(in_prompt, tokens[:, t], sampled)
            # Finished rows get a harmless token (with the KV cache they are dropped from decoding below).
            step = torch.where(torch.tensor([f is not None for f in finish], device=device), tokens[:, t - 1], step)
            tokens[:, t] = step
            step_list, lp_list, prompt_list = step.tolist(), sampled_lp.tolist(), in_prompt.tolist()
            for r in range(b):
                if prompt_list[r] or finish[r] is not None:
                    continue
                tok = step_list[r]
                completions[r].append(tok)
                logprobs[r].append(lp_list[r])
                if tok in eos:
                    finish[r] = "stop"
                    continue
                if s.stop and self.tokenizer is not None:
                    text, matched = cut_at_stop(self._decode(completions[r]), s.stop)
                    if matched:
                        texts[r] = text
                        finish[r] = "stop"
                        continue
                if len(completions[r]) >= budgets[r]:
                    finish[r] = "length"
            if all(f is not None for f in finish) or t == total - 1:
                break
            if context is not None:
                # Decode only the unfinished rows: once a quarter of the cached rows are finished
                # (COMPACT_AT_RUNNING_SHARE), the KV cache is compacted to the rows still running (cache slot i holds
                # row active[i]). Sampling still draws for all b rows (finished rows keep their last logits), so the
                # random stream, and every completion, is that of the lockstep batch.
                running = [i for i, r in enumerate(active.tolist()) if finish[r] is None]
                if len(running) <= COMPACT_AT_RUNNING_SHARE * len(active):
                    keep = torch.tensor(running, device=device)
                    for key_memory, value_memory in context.key_value_memory_dict.values():
                        key_memory[:t, : len(running)] = key_memory[:t, keep]
                        value_memory[:t, : len(running)] = value_memory[:t, keep]
                    active = active[keep]
                mask = padding[active, None, None, : t + 1] if left else None
                last[active] = self._forward(tokens[active, t : t + 1], positions[active, t : t + 1], context, mask)
                context.increment_sequence_len_offset(1)
            else:
                last = self._forward(tokens[:, : t + 1], positions[:, : t + 1], None)

        out = []
        for r in range(b):
            reason = finish[r] or "length"
            text = texts[r]
            if not text:
                ids = completions[r][:-1] if completions[r] and completions[r][-1] in eos else completions[r]
                text = self._decode(ids)
            out.append(
                Rollout(
                    prompt_ids=list(prompts[r]),
                    completion_ids=completions[r],
                    completion_text=text,
                    logprobs=logprobs[r],
                    finish_reason=reason,  # type: ignore[arg-type]
                )
            )
        return out

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=False)


class MegatronCopyEngine(MegatronRolloutEngine):
    """The megatron engine at a generation layout of its own: a whole-model copy of the policy per rank at tensor
    parallelism ``tensor_parallel_size`` (TP groups of consecutive ranks), refreshed from the training model by the
    refit stream. Generation DP is world / ``tensor_parallel_size``, whatever the training TP / PP / DP.

    Building it and :meth:`update_weights` are collectives over the world (process groups, the refit stream over
    each training model-parallel group): every rank calls them.

    Args:
        policy: This rank's training model (``GPTModel``, a wrapper of one, or its virtual-pipeline chunks).
        tokenizer: As :class:`MegatronRolloutEngine`.
        puzzle_config: The architecture the policy was built from.
        tensor_parallel_size: Generation TP (must divide the world size, the heads and every layer's KV heads).
        seq_length: The copy's longest sequence; default the policy's ``max_sequence_length``.
        params_dtype: The copy's dtype; default the policy's parameter dtype.
        bucket_bytes: Bucket size of the refit stream (bounds the transient memory of a refit).
        config: Decoding settings.
        default_sampling: As :class:`MegatronRolloutEngine`.
    """

    def __init__(
        self,
        policy: Any,
        tokenizer: Any = None,
        *,
        puzzle_config: Any,
        tensor_parallel_size: int = 1,
        seq_length: int | None = None,
        params_dtype: torch.dtype | None = None,
        bucket_bytes: int | None = None,
        config: MegatronEngineConfig | None = None,
        default_sampling: SamplingSettings | None = None,
    ) -> None:
        from nemotron_plugins.puzzle.hf_checkpoint import ParallelRanks
        from nemotron_plugins.puzzle.model import build_puzzle_model, single_stage_process_groups, unwrap_model
        from nemotron_plugins.rl.refit import DEFAULT_BUCKET_BYTES
        from nemotron_plugins.runtime.config import ParallelConfig

        self.layout = EngineLayout.current(tensor_parallel_size)
        chunks = list(policy) if isinstance(policy, (list, tuple)) else [policy]
        first = unwrap_model(chunks[0])
        param = next(first.parameters())
        groups, tp_rank, _ = single_stage_process_groups(tensor_parallel_size)
        copy = build_puzzle_model(
            puzzle_config,
            parallel=ParallelConfig(tensor_model_parallel_size=tensor_parallel_size),
            seq_length=seq_length or getattr(first, "max_sequence_length", None),
            params_dtype=params_dtype or param.dtype,
            device=param.device.type,
            perform_initialization=False,
            pg_collection=groups,
        )
        copy.requires_grad_(False)
        copy.eval()
        super().__init__(copy, tokenizer, config=config, default_sampling=default_sampling)
        self.puzzle_config = puzzle_config
        self.bucket_bytes = DEFAULT_BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.ranks = ParallelRanks(tp_rank=tp_rank, tp_size=tensor_parallel_size, tp_group=groups.tp)
        """The copy's TP rank / size / group (what the refit converts the HF tensors to)."""
        self.update_weights(model=policy)

    def update_weights(self, state_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Bring the copy to the policy's weights: ``model=`` the training model (this rank's stage / chunks; a
        collective, the refit stream) or ``state_dict=`` HF-named whole tensors (trained FFN widths; local)."""
        from nemotron_plugins.puzzle.hf_checkpoint import load_hf_tensors
        from nemotron_plugins.rl.refit import stream_hf_weights

        model = kwargs.pop("model", None)
        if kwargs or (model is None) == (state_dict is None):
            raise TypeError(
                f"MegatronCopyEngine.update_weights takes model= (the training model) or state_dict= (HF tensors), "
                f"got state_dict={'given' if state_dict is not None else None}, model="
                f"{'given' if model is not None else None}, other {sorted(kwargs)}"
            )
        dtype = next(self.model.parameters()).dtype
        if state_dict is not None:
            buckets: Any = [[(k, v.to(dtype)) for k, v in state_dict.items()]]
        else:
            buckets = stream_hf_weights(
                model, config=self.puzzle_config, bucket_bytes=self.bucket_bytes, dtype=dtype, export_widths=False
            )
        load_hf_tensors(self.model, buckets, self.puzzle_config, parallel=self.ranks)

    def close(self) -> None:
        """Drop the copy."""
        self.model = None
