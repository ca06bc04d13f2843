"""The embedded rollout engine: sample from the Megatron policy itself, with megatron-core's KV cache.

The engine runs the trainer's own ``GPTModel`` (so :meth:`MegatronRolloutEngine.update_weights` has nothing to copy)
through megatron-core's static-batching inference path: a
:class:`megatron.core.inference.contexts.StaticInferenceContext` passed as ``inference_context=`` to
``GPTModel.forward`` makes every attention layer keep its keys and values in preallocated buffers, so each decoding
step feeds one token per sequence. It works on CPU with the :mod:`nemotron_plugins.runtime.cpu` adapter and on GPU
unchanged; heterogeneous Puzzle layers (no-op or linear attention) simply keep no cache.

Sequences of different prompt lengths advance in lockstep as in megatron-core's own static-batch generation: the
batch is prefilled up to its shortest prompt, then every step writes one position per sequence, taking the prompt's
token where the prompt is still running and a sampled token elsewhere. No padding or attention mask is needed and a
completion's log-probs are exactly those of a full causal forward over prompt + completion (tested to 1e-4).

Sampling: logits / temperature, log-softmax (temperature 0: greedy arg-max); top-p keeps the smallest set of most likely tokens whose probability
reaches ``top_p`` and samples from it renormalised. The returned log-prob of a token is its log-probability under the
temperature-scaled distribution before top-p truncation (what the trainer recomputes). Tensor parallelism works
(logits are gathered; every TP rank draws the same tokens from the same seed); pipeline parallelism is not supported
by this engine (use ``vllm`` for PP-trained models).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nemotron_plugins.rl.engines.base import (
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


def _unwrap(model: Any) -> Any:
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(
                f"the megatron rollout engine needs one model chunk, got {len(model)} (virtual pipeline stages are "
                "not supported; use the vllm engine)"
            )
        model = model[0]
    return model


def _pipeline_size() -> int:
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            return parallel_state.get_pipeline_model_parallel_world_size()
    except ImportError:  # pragma: no cover - megatron-core is a dependency
        pass
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
        if _pipeline_size() > 1:
            raise ValueError("the megatron rollout engine does not support pipeline parallelism; use 'vllm'")
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

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, context: Any) -> torch.Tensor:
        if context is None:
            logits = self.model(tokens, positions, None, runtime_gather_output=True)
        else:
            logits = self.model(tokens, positions, None, inference_context=context, runtime_gather_output=True)
        return logits[:, -1, :]

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
        total = max(len(p) + k for p, k in zip(prompts, budgets, strict=True))
        tokens = torch.zeros(b, total, dtype=torch.long, device=device)
        for r, p in enumerate(prompts):
            tokens[r, : len(p)] = torch.tensor(p, dtype=torch.long, device=device)
        positions = torch.arange(total, device=device).unsqueeze(0).expand(b, -1)
        min_len = int(lens.min().item())

        completions: list[list[int]] = [[] for _ in range(b)]
        logprobs: list[list[float]] = [[] for _ in range(b)]
        texts: list[str] = [""] * b
        finish: list[str | None] = [None] * b
        eos = set(self.eos_token_ids)

        context = None
        if self.config.use_kv_cache:
            from megatron.core.inference.contexts import StaticInferenceContext

            context = StaticInferenceContext(b, total)
            last = self._forward(tokens[:, :min_len], positions[:, :min_len], context)
            context.increment_sequence_len_offset(min_len)
            context.enable_decode_mode()
        else:
            last = self._forward(tokens[:, :min_len], positions[:, :min_len], None)

        for t in range(min_len, total):
            sampled, sampled_lp = sample_tokens(
                last, temperature=s.temperature, top_p=s.top_p, generator=generator, vocab_size=self.vocab_size
            )
            in_prompt = t < lens
            step = torch.where(in_prompt, tokens[:, t], sampled)
            # Finished rows keep running (the batch advances in lockstep) on a harmless token.
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
                last = self._forward(tokens[:, t : t + 1], positions[:, t : t + 1], context)
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
