"""``megatron_reward_model``: prompt + reply scored in-process by a reward model this project trained.

The model is loaded from its training checkpoint root (``task="reward_model"``: distributed checkpoint, the HF
``config.json`` and ``tokenizer/`` beside it) at the current megatron layout, lazily on the first batch, so building
the reward (as validation does) reads only the metadata. A sample is the prompt (chat messages, or a string as one
user turn) rendered with ``chat_template`` and its generation header, then the reply (any ``<think>`` block removed,
as for the HTTP ``reward_model`` reward) and the end-of-turn token: exactly how the reward model's training pairs
were encoded (:func:`nemotron_plugins.preference.data.encode_conversation`).

How it is served: in the caller's process, on its device, at its megatron layout; every rank of a tensor-parallel
group must score the same batch together (the RPO trainer scores every reply on every rank). Scoring is a fixed
forward pass per ``batch_size`` samples: bounded in time by the input length, which is capped by ``max_length``
tokens (a longer sample gets status ``invalid_input``, never a score of 0). ``scale`` and ``offset`` map the raw
reward as ``scale * r + offset``. For a reward model on other machines, serve it behind the HTTP ``reward_model``
reward's wire format instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nemotron_plugins.rewards.base import Reward, RewardResult, RewardSample


class MegatronRewardModelReward(Reward):
    """Scores from a saved Megatron reward model (see the module docstring).

    Args:
        checkpoint: The reward model's checkpoint root (``<run>/checkpoints``).
        chat_template: Registered chat template the reward model was trained with.
        batch_size: Samples per forward pass.
        max_length: Longest prompt + reply in tokens (longer: ``invalid_input``).
        scale: Multiplier applied to the raw reward.
        offset: Added after scaling.

    Raises:
        ValueError: ``checkpoint`` holds no reward-model checkpoint metadata (``config.json``, ``tokenizer/``).
    """

    name = "megatron_reward_model"
    bounded = True  # one forward pass per batch, inputs capped at max_length tokens

    def __init__(
        self,
        *,
        checkpoint: str,
        chat_template: str = "llama-nemotron-super",
        batch_size: int = 64,
        max_length: int = 4096,
        scale: float = 1.0,
        offset: float = 0.0,
    ) -> None:
        root = Path(checkpoint)
        if not (root / "config.json").is_file() or not (root / "tokenizer").is_dir():
            raise ValueError(
                f"megatron_reward_model: checkpoint={checkpoint!r} has no config.json and tokenizer/ (train one with a "
                "task='reward_model' recipe; its checkpoint.save_dir is the root to pass)"
            )
        if batch_size < 1 or max_length < 2:
            raise ValueError("megatron_reward_model: batch_size must be >= 1 and max_length >= 2")
        self.checkpoint = str(root)
        self.chat_template = chat_template
        self.batch_size = batch_size
        self.max_length = max_length
        self.scale = float(scale)
        self.offset = float(offset)
        self._model: Any = None
        self._tokenizer: Any = None
        self._owns_distributed = False

    def _load(self) -> None:
        import torch

        from nemotron_plugins.chat.tokenizer import load_tokenizer
        from nemotron_plugins.puzzle.block_config import load_hf_config
        from nemotron_plugins.puzzle.model import build_puzzle_model
        from nemotron_plugins.reward_model.model import RewardModel
        from nemotron_plugins.runtime.distributed import init_distributed
        from nemotron_plugins.training.checkpointing import load_checkpoint

        if not torch.distributed.is_initialized():
            init_distributed()  # one process, the default layout (the CLI); a training run has its own
            self._owns_distributed = True
        root = Path(self.checkpoint)
        self._tokenizer = load_tokenizer(root / "tokenizer")
        arch = load_hf_config(root / "config.json")
        model = RewardModel(build_puzzle_model(arch, seq_length=self.max_length, perform_initialization=False))
        load_checkpoint(root, model=[model], load_rng=False)
        model.eval()
        self._model = model

    def _encode(self, sample: RewardSample) -> list[int] | None:
        from nemotron_plugins.preference.data import encode_conversation
        from nemotron_plugins.rewards.reward_model import conversation

        messages = conversation(sample)
        prompt, reply = messages[:-1], messages[-1]["content"]
        if not prompt:
            prompt = [{"role": "user", "content": ""}]
        ids, _ = encode_conversation(self._tokenizer, prompt, reply, self.chat_template)
        return ids if len(ids) <= self.max_length else None

    def score(self, samples: Sequence[RewardSample]) -> list[RewardResult]:
        """Score every sample; one result per sample, in input order."""
        import torch

        from nemotron_plugins.reward_model.model import last_token_rewards

        if self._model is None:
            self._load()
        results: list[RewardResult | None] = [None] * len(samples)
        encoded: list[tuple[int, list[int]]] = []
        for i, s in enumerate(samples):
            if not isinstance(s.completion, str):
                results[i] = RewardResult.invalid("megatron_reward_model: completion must be a string")
                continue
            ids = self._encode(s)
            if ids is None:
                results[i] = RewardResult.invalid(
                    f"megatron_reward_model: prompt + reply is longer than max_length={self.max_length} tokens"
                )
            else:
                encoded.append((i, ids))
        pad = self._tokenizer.pad_token_id or 0
        device = next(self._model.parameters()).device
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            width = max(len(ids) for _, ids in chunk)
            width = -(-width // 8) * 8
            tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
            for r, (_, ids) in enumerate(chunk):
                tokens[r, : len(ids)] = torch.tensor(ids)
            last = torch.tensor([len(ids) - 1 for _, ids in chunk])
            positions = torch.arange(width).unsqueeze(0).expand(len(chunk), width)
            with torch.no_grad():
                out = self._model(tokens.to(device), positions.to(device), None)
                raw = last_token_rewards(out, last).double().cpu().tolist()
            for (i, _), value in zip(chunk, raw, strict=True):
                results[i] = RewardResult(score=self.scale * value + self.offset, components={"raw": value})
        return [r if r is not None else RewardResult.error("megatron_reward_model: no result") for r in results]

    def close(self) -> None:
        """Drop the model (and the single-process megatron state it set up for itself, if any)."""
        self._model = None
        if self._owns_distributed:
            from nemotron_plugins.runtime.distributed import destroy_distributed

            destroy_distributed()
            self._owns_distributed = False
