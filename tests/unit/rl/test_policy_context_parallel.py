"""The pieces of the GRPO update's context parallelism that need no process group: how a rollout micro-batch is cut
over CP ranks (every completion token on exactly one rank, its target at the model's output position), and
``context_parallel_off`` (the model's CP switches turned off for generation and restored)."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.puzzle.context_parallel import ContextParallelError, context_parallel_off
from nemotron_plugins.rl.policy_worker import pack_policy_batch, plan_micro_batches

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _batch():
    gen = torch.Generator().manual_seed(3)
    prompts, completions, logprobs = [], [], []
    for i in range(6):
        prompts.append(torch.randint(1, 50, (3 + i,), generator=gen).tolist())
        completions.append(torch.randint(1, 50, (2 + 3 * i,), generator=gen).tolist())
        logprobs.append([-1.0] * len(completions[-1]))
    return pack_policy_batch(prompts, completions, logprobs, torch.randn(6, generator=gen), pad_id=0)


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("cp", [2, 3])
def test_every_token_is_on_exactly_one_cp_rank(pack: bool, cp: int) -> None:
    batch = _batch()
    rows = torch.arange(len(batch))
    covered = torch.zeros(batch.targets.shape)
    mask_sum = torch.zeros(batch.mask.shape)
    seq_lengths = set()
    for rank in range(cp):
        plan = plan_micro_batches(batch, rows, 4, pack=pack, uniform=False, context_parallel=(rank, cp))
        seq_lengths.add(plan.seq_length)
        for mb in plan.micro_batches:
            r, c, src = mb["place"]
            real = c < batch.lengths[mb["rows"][r]]
            r, c, src = r[real], c[real], src[real]
            # The model's input / target at each placed output position is the batch's token there.
            assert torch.equal(mb["model_targets"].reshape(-1)[src], batch.targets[mb["rows"][r], c])
            assert torch.equal(mb["input_ids"].reshape(-1)[src], batch.input_ids[mb["rows"][r], c])
            # Every rank feeds 1 / cp of the (padded) sequence, whose length is a multiple of 2 x cp.
            assert (mb["input_ids"].shape[1] * cp) % (2 * cp) == 0
            covered[mb["rows"][r], c] += 1
            m, w = mb["mask"].shape
            mask_sum[mb["rows"], :w] += mb["mask"][: mb["rows"].numel()]
    real = torch.arange(batch.targets.shape[1]).unsqueeze(0) < batch.lengths.unsqueeze(1)
    assert torch.equal(covered, real.float())
    assert torch.equal(mask_sum, batch.mask)
    assert len(seq_lengths) == 1  # every CP rank runs the same pipeline shapes


def test_packed_cp_pads_each_sequence_to_two_cp() -> None:
    batch = _batch()
    plan = plan_micro_batches(batch, torch.arange(2), 2, pack=True, uniform=False, context_parallel=(0, 2))
    (mb,) = plan.micro_batches
    params = mb["packed_seq_params"]
    lengths = batch.lengths[:2]
    assert params.cu_seqlens_q[:3].tolist() == [0, int(lengths[0]), int(lengths.sum())]
    padded = (params.cu_seqlens_q_padded[1:] - params.cu_seqlens_q_padded[:-1]).tolist()
    assert all(n % 4 == 0 for n in padded) and padded[0] == -(-int(lengths[0]) // 4) * 4
    assert mb["input_ids"].shape[1] * 2 == plan.fed_tokens


@pytest.fixture
def on_cpu():
    """megatron's modules built and run on CPU (the CPU adapter, forced: these checks need no GPU)."""
    from nemotron_plugins.runtime.cpu import cpu_adapter

    with cpu_adapter(force=True):
        yield


def _cp_modules(cp: int):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType

    from nemotron_plugins.puzzle.attention import SDPACoreAttention

    class Group:
        def size(self) -> int:
            return cp

    config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, context_parallel_size=cp)
    model = torch.nn.Module()
    model.config = config
    model.rotary_pos_emb = RotaryEmbedding(kv_channels=4, rotary_percent=1.0, cp_group=Group())
    model.attention = SDPACoreAttention(config, 1, AttnMaskType.causal)
    return model, Group


def test_context_parallel_off_turns_cp_off_and_restores_it(on_cpu) -> None:
    model, group = _cp_modules(2)
    rotary_group = model.rotary_pos_emb.cp_group
    with context_parallel_off(model) as inside:
        assert inside is model
        assert model.config.context_parallel_size == 1
        assert model.rotary_pos_emb.cp_group is None and model.attention.cp_size == 1
        # Whole-sequence RoPE: the table of every position, not this rank's two chunks.
        assert model.rotary_pos_emb(8).shape[0] == 8
    assert model.config.context_parallel_size == 2
    assert model.rotary_pos_emb.cp_group is rotary_group and model.attention.cp_size == 2
    with pytest.raises(RuntimeError, match="boom"), context_parallel_off(model):
        raise RuntimeError("boom")
    assert model.config.context_parallel_size == 2 and model.attention.cp_size == 2


def test_context_parallel_off_refuses_te_attention(on_cpu) -> None:
    model, group = _cp_modules(2)

    class TEDotProductAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cp_group = group()

    model.te = TEDotProductAttention()
    with pytest.raises(ContextParallelError, match="generation.engine='vllm'"), context_parallel_off(model):
        pass
    assert model.config.context_parallel_size == 2 and model.attention.cp_size == 2
