"""The rollout-engine interface: ``n`` sampled completions per prompt, with token ids and log-probs.

Every engine (``megatron``, ``vllm``, ``openai``) implements :meth:`RolloutEngine.rollout`::

    groups = engine.rollout(prompts, n=16, temperature=1.0, top_p=1.0, max_new_tokens=512, stop=("</answer>",), seed=0)
    groups[i].rollouts[j].completion_ids / .logprobs / .completion_text / .finish_reason

Prompts are token-id lists, text, or chat messages (``[{"role": ..., "content": ...}]``, rendered with the engine's
tokenizer chat template and a generation prompt). ``logprobs[k]`` is the log-probability the engine SAMPLED token
``k`` with, i.e. under the temperature-scaled distribution before top-p truncation (the quantity the trainer
recomputes for the importance-sampling correction).

Completion conventions shared by the engines:

* an end-of-sequence token ends a completion with ``finish_reason="stop"``; it is part of ``completion_ids`` (the
  policy must learn to stop) but not of ``completion_text``;
* a stop string ends it with ``finish_reason="stop"``; tokens up to the one completing the stop string are kept and
  the text is cut right after the stop string (the stop string is included);
* reaching ``max_new_tokens`` gives ``finish_reason="length"``.

:meth:`RolloutEngine.generate` adapts an engine to the curriculum's structural ``CompletionGenerator`` protocol
(``generate(prompts, n) -> list[list[str]]``) using the engine's default sampling settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Prompt = list[int] | str | list[dict[str, Any]]
FinishReason = Literal["stop", "length"]


@dataclass(kw_only=True, slots=True)
class SamplingSettings:
    """Sampling parameters of one :meth:`RolloutEngine.rollout` call."""

    temperature: float = 1.0
    """Softmax temperature (>= 0; 0 is greedy decoding, as in vLLM and the OpenAI API)."""
    top_p: float = 1.0
    """Nucleus threshold in (0, 1]; 1 disables it."""
    max_new_tokens: int = 256
    """Completion length limit in tokens."""
    stop: tuple[str, ...] = ()
    """Stop strings."""
    seed: int | None = None
    """Sampling seed; the same seed, prompts and weights give the same completions (on the same engine)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad parameter."""
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")


@dataclass(kw_only=True, slots=True)
class Rollout:
    """One sampled completion."""

    prompt_ids: list[int] | None
    """The prompt's token ids (``None`` when a server did not report them)."""
    completion_ids: list[int] | None
    """Sampled token ids, end-of-sequence token included (``None`` when a server did not report ids)."""
    completion_text: str
    """Decoded completion without the end-of-sequence token."""
    logprobs: list[float] | None
    """One sampling log-prob per completion token (``None`` when not requested / reported)."""
    finish_reason: FinishReason
    """``"stop"`` (eos or stop string) or ``"length"`` (max_new_tokens reached)."""


@dataclass(kw_only=True, slots=True)
class RolloutGroup:
    """The ``n`` completions of one prompt."""

    prompt_index: int
    """Position of the prompt in the ``rollout`` call."""
    prompt: Prompt
    """The prompt as given."""
    rollouts: list[Rollout] = field(default_factory=list)
    """The completions, in sampling order."""

    @property
    def texts(self) -> list[str]:
        """The completion texts."""
        return [r.completion_text for r in self.rollouts]


@dataclass(frozen=True, slots=True)
class EngineLayout:
    """Where this rank sits in an engine's own generation layout: ``world = tp_size * dp_size`` ranks, TP groups of
    consecutive ranks (rank ``r`` is TP rank ``r % tp_size`` of generation replica ``r // tp_size``), independent of
    the training layout. Engines that generate at their own layout expose one as ``engine.layout``
    (:meth:`nemotron_plugins.rl.generation.GenerationLayout.of_engine` reads it)."""

    world_size: int = 1
    """Ranks in the process group (every one takes part in an engine)."""
    rank: int = 0
    """This rank."""
    tp_size: int = 1
    """Generation tensor parallelism."""

    tp_setting: ClassVar[str] = "generation.tensor_model_parallel_size"
    """The config field that sets ``tp_size`` (named in the error)."""

    def __post_init__(self) -> None:
        if self.tp_size < 1 or self.world_size % self.tp_size:
            raise ValueError(
                f"{self.tp_setting}={self.tp_size} must divide the world size {self.world_size} "
                "(one engine replica per generation-TP group of consecutive ranks)"
            )

    @classmethod
    def current(cls, tp_size: int) -> EngineLayout:
        """The layout of this process (a single process when no process group is initialised)."""
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(
                world_size=torch.distributed.get_world_size(), rank=torch.distributed.get_rank(), tp_size=tp_size
            )
        return cls(tp_size=tp_size)

    @property
    def tp_rank(self) -> int:
        """This rank's position in its generation-TP group."""
        return self.rank % self.tp_size

    @property
    def dp_size(self) -> int:
        """Generation data parallelism (independent replicas)."""
        return self.world_size // self.tp_size

    @property
    def dp_rank(self) -> int:
        """This rank's replica."""
        return self.rank // self.tp_size

    def peer_group(self) -> Any:
        """The process group of this rank and the ranks at the same TP position in the other replicas (one per
        replica), for exchanging rollouts; ``None`` with one replica. A collective: every rank of the world calls it
        (one group per TP position, created in the same order everywhere)."""
        if self.dp_size == 1:
            return None
        import torch

        mine = None
        for position in range(self.tp_size):
            group = torch.distributed.new_group([position + d * self.tp_size for d in range(self.dp_size)])
            if position == self.tp_rank:
                mine = group
        return mine


class RolloutEngine(ABC):
    """Generates completions for RL and evaluation.

    Args:
        default_sampling: Settings used by :meth:`generate` (the curriculum adapter) and for arguments that
            :meth:`rollout` callers leave out.
    """

    name: str = "base"

    def __init__(self, default_sampling: SamplingSettings | None = None) -> None:
        self.default_sampling = default_sampling or SamplingSettings()
        self.default_sampling.validate()

    def sampling(self, **overrides: Any) -> SamplingSettings:
        """Default sampling settings with the non-``None`` ``overrides`` applied, validated."""
        base = self.default_sampling
        values = {
            "temperature": base.temperature,
            "top_p": base.top_p,
            "max_new_tokens": base.max_new_tokens,
            "stop": base.stop,
            "seed": base.seed,
        }
        for key, value in overrides.items():
            if key not in values:
                raise TypeError(f"unknown sampling parameter {key!r}; valid: {sorted(values)}")
            if value is not None:
                values[key] = tuple(value) if key == "stop" else value
        settings = SamplingSettings(**values)
        settings.validate()
        return settings

    @abstractmethod
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
        """Sample ``n`` completions for every prompt; one :class:`RolloutGroup` per prompt, in prompt order."""

    def update_weights(self, state_dict: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Make the engine sample from the trainer's current weights (no-op for engines that share the model).

        Raises:
            NotImplementedError: For engines whose weights are outside this process (a remote server).
        """
        raise NotImplementedError(f"the {self.name!r} rollout engine cannot receive weights from the trainer")

    def generate(self, prompts: Sequence[Prompt], n: int) -> list[list[str]]:
        """Curriculum adapter: ``n`` completion texts per prompt with the default sampling settings."""
        return [group.texts for group in self.rollout(prompts, n=n)]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (GPU memory, threads)."""


def check_n(n: int) -> None:
    """Raise ``ValueError`` unless ``n`` is an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (completions per prompt) must be an integer >= 1, got {n!r}")


def encode_prompt(tokenizer: Any, prompt: Prompt, index: int) -> list[int]:
    """Token ids of a prompt given as ids, text or chat messages.

    Args:
        tokenizer: A Hugging Face tokenizer (``encode`` / ``apply_chat_template``); only needed for text/messages.
        prompt: The prompt.
        index: Its position, for error messages.

    Raises:
        ValueError: A malformed prompt or a text prompt without a tokenizer, naming the prompt index.
    """
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(f"prompt {index} is text but the engine has no tokenizer; pass token ids or a tokenizer")
        return list(tokenizer.encode(prompt, add_special_tokens=False))
    if isinstance(prompt, Sequence) and prompt and all(isinstance(t, Mapping) for t in prompt):
        if tokenizer is None:
            raise ValueError(f"prompt {index} is chat messages but the engine has no tokenizer")
        ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, Mapping):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return [int(t) for t in prompt]
    raise ValueError(
        f"prompt {index} must be a non-empty list of token ids, a string or a list of chat messages, got {prompt!r:.80}"
    )


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` right after the earliest stop string; return ``(text, matched)``."""
    best = -1
    for s in stop:
        pos = text.find(s)
        if pos >= 0 and (best < 0 or pos + len(s) < best):
            best = pos + len(s)
    return (text[:best], True) if best >= 0 else (text, False)
