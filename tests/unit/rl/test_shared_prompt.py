"""Shared-prompt micro-batches (issue 17): a group's prompt runs once, every completion token keeps its input,
position and visible context, and the log-probs and gradients equal the padded layout's."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.rl.config import GRPOConfig, GRPOConfigError
from nemotron_plugins.rl.policy_worker import (
    _forward_micro_batch,
    _micro_batch_logprobs,
    pack_policy_batch,
    plan_micro_batches,
)
from nemotron_plugins.rl.shared_prompt import (
    layout_cost,
    shared_prompt_layout,
    shared_prompt_shape,
    shared_prompt_support,
)
from tests.unit.rl.conftest import tiny_puzzle_policy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

VOCAB = 106


def _batch(prompt_lengths=(9, 14, 5), generations=4, completion_lengths=(1, 7), seed=0):
    """Groups of ``generations`` rows with one shared prompt each; completions of random lengths (1 included)."""
    gen = torch.Generator().manual_seed(seed)
    prompts, completions, logprobs = [], [], []
    for plen in prompt_lengths:
        prompt = torch.randint(2, VOCAB, (plen,), generator=gen).tolist()
        for _ in range(generations):
            n = int(torch.randint(completion_lengths[0], completion_lengths[1] + 1, (1,), generator=gen))
            prompts.append(prompt)
            completions.append(torch.randint(2, VOCAB, (n,), generator=gen).tolist())
            logprobs.append([-1.0] * n)
    advantages = torch.randn(len(prompts), generator=gen)
    return pack_policy_batch(prompts, completions, logprobs, advantages, pad_id=0)


def test_every_loss_token_keeps_its_input_position_and_context() -> None:
    batch = _batch()
    rows = torch.arange(len(batch))
    layout = shared_prompt_layout(batch, rows, multiple=8)
    ids, pos, masked = layout["input_ids"], layout["position_ids"], layout["attention_mask"][:, 0]
    assert ids.shape[0] == 3  # one row per prompt
    assert ids.shape[1] % 8 == 0
    assert shared_prompt_shape(batch, rows, multiple=8) == tuple(ids.shape)
    r, c, src = layout["gather"]
    # every completion token of the batch is predicted exactly once
    covered = torch.zeros_like(batch.mask)
    covered[r, c] += 1
    assert torch.equal(covered, batch.mask)
    width = ids.shape[1]
    g, at = src // width, src % width
    # the position predicting (r, c) holds the row's input token c at position c ...
    assert torch.equal(ids[g, at], batch.input_ids[r, c])
    assert torch.equal(pos[g, at], c)
    # ... and sees exactly the row's tokens 0 .. c (the prompt and its own completion prefix), in order
    for k in range(r.numel()):
        visible = (~masked[g[k], at[k]]).nonzero().flatten()
        assert torch.equal(ids[g[k], visible], batch.input_ids[r[k], : int(c[k]) + 1])
        assert torch.equal(pos[g[k], visible], torch.arange(int(c[k]) + 1))


def test_cost_model_picks_sharing_for_long_prompts_only() -> None:
    long_prompts = _batch(prompt_lengths=(60, 60), generations=8, completion_lengths=(4, 8))
    short_prompts = _batch(prompt_lengths=(3, 3), generations=8, completion_lengths=(40, 60))
    for batch, shared in ((long_prompts, True), (short_prompts, False)):
        plan = plan_micro_batches(
            batch, torch.arange(len(batch)), 16, pack=False, uniform=False, share_prompts="auto", hidden_size=128
        )
        assert all(("gather" in mb) is shared for mb in plan.micro_batches)
        padded = plan_micro_batches(batch, torch.arange(len(batch)), 16, pack=False, uniform=False)
        assert (plan.fed_tokens < padded.fed_tokens) is shared
    assert layout_cost(8, 100, hidden_size=128, dense_mask=True) > layout_cost(
        8, 100, hidden_size=128, dense_mask=False
    )


def test_bad_prompt_sharing_is_named() -> None:
    with pytest.raises(GRPOConfigError, match=r"GRPOConfig\.prompt_sharing = 'always'"):
        GRPOConfig(prompt_sharing="always")


@pytest.fixture(scope="module")
def policy():
    with tiny_puzzle_policy(VOCAB, num_layers=6, seq_length=128) as (model, _):
        yield model


def _logprobs_and_grads(model, plan, batch):
    model.zero_grad(set_to_none=True)
    total = torch.zeros(batch.targets.shape)
    loss = 0.0
    for mb in plan.micro_batches:
        lp = _micro_batch_logprobs(_forward_micro_batch(model, mb), mb, 1.0, VOCAB)
        weights = mb["mask"] * mb["advantages"][:, None]
        loss = loss + (lp * weights).sum()
        total[mb["rows"], : lp.shape[1]] += (lp * mb["mask"]).detach()[: mb["rows"].numel()]
    loss.backward()
    return total, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_logprobs_and_gradients_equal_the_padded_layout(policy) -> None:
    assert shared_prompt_support(policy) is None
    batch = _batch()
    rows = torch.arange(len(batch))
    padded = plan_micro_batches(batch, rows, 6, pack=False, uniform=False)
    shared = plan_micro_batches(batch, rows, 6, pack=False, uniform=False, share_prompts="on")
    assert all("gather" in mb for mb in shared.micro_batches)
    assert shared.fed_tokens < padded.fed_tokens
    lp_padded, grads_padded = _logprobs_and_grads(policy, padded, batch)
    lp_shared, grads_shared = _logprobs_and_grads(policy, shared, batch)
    assert (lp_padded * batch.mask).abs().sum() > 0
    torch.testing.assert_close(lp_shared, lp_padded, atol=1e-5, rtol=1e-5)
    assert grads_shared.keys() == grads_padded.keys()
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_shared[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_models_without_a_mask_reaching_attention_are_reported(policy) -> None:
    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config

    model = build_puzzle_model(
        tiny_puzzle_config(VOCAB, num_layers=2), seq_length=32, layer_spec="puzzle_local", perform_initialization=False
    )
    assert "not SDPACoreAttention" in shared_prompt_support(model)


def test_prompt_sharing_on_where_impossible_names_the_field(policy) -> None:
    from types import SimpleNamespace

    from nemotron_plugins.puzzle.model import build_puzzle_model
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.rl.policy_worker import _prompt_sharing

    def config(mode: str) -> SimpleNamespace:
        return SimpleNamespace(algorithm=SimpleNamespace(prompt_sharing=mode))

    assert _prompt_sharing(policy, config("auto"), pack=False) == ("auto", 128)
    assert _prompt_sharing(policy, config("auto"), pack=True)[0] == "off"  # packed (CUDA): padded rows
    with pytest.raises(
        GRPOConfigError, match=r"GRPOConfig\.prompt_sharing = 'on' is not possible here: micro-batches"
    ):
        _prompt_sharing(policy, config("on"), pack=True)
    local = build_puzzle_model(
        tiny_puzzle_config(VOCAB, num_layers=2), seq_length=32, layer_spec="puzzle_local", perform_initialization=False
    )
    assert _prompt_sharing(local, config("auto"), pack=False)[0] == "off"
    with pytest.raises(GRPOConfigError, match="not SDPACoreAttention"):
        _prompt_sharing(local, config("on"), pack=False)
    # The reference model (a KL term) runs the same micro-batches: the mask must reach its attention too.
    assert _prompt_sharing(policy, config("auto"), pack=False, ref_model=local)[0] == "off"
    with pytest.raises(GRPOConfigError, match="reference model: .* not SDPACoreAttention"):
        _prompt_sharing(policy, config("on"), pack=False, ref_model=local)
