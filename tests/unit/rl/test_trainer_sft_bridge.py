"""The GRPO policy starts from the SFT stage's Megatron weights: same logits after the name/layout mapping."""

from __future__ import annotations

import torch

from nemotron_plugins.puzzle.model import build_puzzle_model
from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
from nemotron_plugins.rl.puzzle_policy import PuzzlePolicy
from nemotron_plugins.rl.trainer import megatron_state_to_policy_state
from nemotron_plugins.runtime.distributed import distributed_context


def test_megatron_weights_give_the_same_logits_in_the_policy():
    torch.set_num_threads(1)
    cfg = tiny_puzzle_config(106, hidden_size=64, num_attention_heads=4, max_position_embeddings=64)
    with distributed_context():
        torch.manual_seed(0)
        model = build_puzzle_model(cfg, device="cpu").eval()
        for p in model.parameters():  # non-trivial norms too
            torch.nn.init.normal_(p, std=0.1) if p.dim() > 1 else torch.nn.init.uniform_(p, 0.5, 1.5)
        ids = torch.randint(0, 106, (2, 12))
        pos = torch.arange(12).unsqueeze(0).expand(2, -1)
        with torch.no_grad():
            ref = model(ids, pos, None)[..., :106]
        state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    policy = PuzzlePolicy(cfg).eval()
    policy.load_state_dict(megatron_state_to_policy_state(state, cfg))
    with torch.no_grad():
        out = policy(ids)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
