"""The reward model: a Puzzle ``GPTModel`` backbone whose final hidden state at a sequence's last token feeds a
scalar head.

The backbone is exactly the policy's megatron-core model (:func:`~nemotron_plugins.puzzle.model.build_puzzle_model`
through :func:`~nemotron_plugins.training.setup.build_model`), so it starts from a policy checkpoint with the usual
initialisation and parallel layouts; its output layer is kept (a policy checkpoint loads strictly) but never run.
The forward runs megatron's own embedding / rotary preprocessing and the decoder (final norm included), then the
head on the last pipeline stage: ``[s, b, h] -> [b, s]`` rewards at every position; callers read the last token's.

The head is a plain ``Linear(h, 1)`` replicated on every tensor-parallel rank (its inputs are identical there; with
sequence parallelism the sequence is gathered first), saved in distributed checkpoints as a replicated tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.transformer.module import MegatronModule


class RewardModel(MegatronModule):
    """``backbone`` (a megatron-core ``GPTModel``) + a scalar head.

    Args:
        backbone: This rank's ``GPTModel`` chunk.
        head_init_std: Standard deviation of the head's initial weights (bias 0). The default 0 starts every reward
            at 0 with no gradient into the backbone, so the head is fitted first and the backbone follows as the head
            grows (a random head sent spikes of ~100x the usual gradient norm into a tiny SFT backbone, measured).
        seed: Seed of the head's initialisation (the same on every rank).
    """

    def __init__(self, backbone: Any, *, head_init_std: float = 0.0, seed: int = 0) -> None:
        super().__init__(config=backbone.config)
        self.backbone = backbone
        self.pre_process = backbone.pre_process
        self.post_process = backbone.post_process
        self.model_type = getattr(backbone, "model_type", None)
        hidden = backbone.config.hidden_size
        if self.post_process:
            device = next(backbone.parameters()).device
            self.head = torch.nn.Linear(hidden, 1, bias=True, device=device, dtype=backbone.config.params_dtype)
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                self.head.weight.copy_(torch.randn(1, hidden, generator=generator) * head_init_std)
                self.head.bias.zero_()

    def set_input_tensor(self, input_tensor: Any) -> None:
        """Pipeline stages after the first: the previous stage's hidden states (megatron's schedules call it)."""
        self.backbone.set_input_tensor(input_tensor)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        """Rewards ``[b, s]`` at every position on the last pipeline stage; hidden states on the others."""
        b = self.backbone
        pre = b._preprocess(
            input_ids=input_ids, position_ids=position_ids, decoder_input=None, packed_seq_params=packed_seq_params
        )
        decoder_input, rotary_pos_emb, rotary_pos_cos, rotary_pos_sin, sequence_len_offset = pre[:5]
        hidden = b.decoder(
            hidden_states=decoder_input,
            attention_mask=attention_mask,
            rotary_pos_emb=rotary_pos_emb,
            rotary_pos_cos=rotary_pos_cos,
            rotary_pos_sin=rotary_pos_sin,
            packed_seq_params=packed_seq_params,
            sequence_len_offset=sequence_len_offset,
        )
        if not self.post_process:
            return hidden
        if self.config.sequence_parallel:
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            # Every TP rank computes the same rewards and loss: the backward only splits the gradient back.
            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        return self.head(hidden).squeeze(-1).transpose(0, 1).float()


def last_token_rewards(rewards: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """``[n]`` rewards at each row's last real token from ``[n, s]`` per-position rewards."""
    return rewards.gather(1, last_index.to(rewards.device).long().unsqueeze(1)).squeeze(1)
