"""Our DPO loss against TRL 1.16's DPOTrainer on the same sequence log-probabilities.

A real (tiny, CPU) TRL ``DPOTrainer`` is built; its ``_compute_loss`` runs with the policy forward replaced by a
module returning our per-token log-probs (TRL sums them over the completion) and the reference log-probs given as
precomputed inputs. TRL's ``sigmoid`` loss type is DPO; our bwd-KL RPO with a certain reward gap equals it too.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nemotron_plugins.preference.losses import dpo_loss, rpo_loss, sequence_logps

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def _tiny_trainer(tmp_path, beta: float):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>", *"abcdefghij "])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=1,
        )
    )
    data = datasets.Dataset.from_list([{"prompt": "ab", "chosen": "cd", "rejected": "ef"}] * 4)
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        beta=beta,
        loss_type=["sigmoid"],
        per_device_train_batch_size=2,
    )
    import copy

    return trl.DPOTrainer(
        model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=hf_tok
    )


class _LogProbs(torch.nn.Module):
    """Stands in for the policy: returns the given per-token log-probs (masked to the completion)."""

    def __init__(self, token_logps: torch.Tensor) -> None:
        super().__init__()
        self.token_logps = token_logps

    def forward(self, **kwargs):
        t = self.token_logps
        return SimpleNamespace(
            log_probs=t,
            entropy=torch.zeros_like(t),
            mean_logits=torch.zeros_like(t),
            is_top1=torch.zeros_like(t, dtype=torch.bool),
            log_sum_sq_probs=torch.zeros_like(t),
            logits=torch.zeros(*t.shape, 3),
            aux_loss=None,
        )


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl(tmp_path, beta: float) -> None:
    trainer = _tiny_trainer(tmp_path, beta)
    gen = torch.Generator().manual_seed(1)
    pairs, width = 3, 7
    mask = torch.zeros(2 * pairs, width + 1, dtype=torch.long)
    for r, start in enumerate([2, 3, 4, 2, 5, 3]):
        mask[r, start:] = 1  # completion tokens of each sequence (chosen rows first, then rejected)
    shift = mask[:, 1:].float()
    token = -torch.rand(2 * pairs, width, generator=gen, dtype=torch.float64) * 3 * shift
    ref = -torch.rand(2 * pairs, generator=gen, dtype=torch.float64) * 10
    inputs = {
        "input_ids": torch.ones(2 * pairs, width + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * pairs, width + 1, dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": ref[:pairs],
        "ref_rejected_logps": ref[pairs:],
    }
    trainer.precompute_ref_logps = True
    trainer.model.train()
    trl_loss = trainer._compute_loss(_LogProbs(token), inputs, False)
    seq = sequence_logps(token, shift)
    ours = dpo_loss(seq[:pairs], seq[pairs:], ref[:pairs], ref[pairs:], beta=beta).mean()
    torch.testing.assert_close(ours, trl_loss.double(), rtol=1e-6, atol=1e-9)
    certain = torch.ones(pairs, dtype=torch.float64)
    rpo = rpo_loss(
        seq[:pairs], seq[pairs:], ref[:pairs], ref[pairs:], 1e4 * certain, 0 * certain, beta=beta, reward_scale=1.0
    ).mean()
    torch.testing.assert_close(rpo, trl_loss.double(), rtol=1e-6, atol=1e-9)
