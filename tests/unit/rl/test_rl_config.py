from __future__ import annotations

import pytest

from nemotron_plugins.registry import ALGORITHMS, ROLLOUT_ENGINES
from nemotron_plugins.rl.config import GRPOConfig, GRPOConfigError, grpo_config, rloo_config


def test_defaults_follow_the_paper():
    cfg = GRPOConfig()
    assert (cfg.num_prompts_per_rollout, cfg.num_generations, cfg.epsilon) == (72, 16, 0.2)
    assert cfg.rollout_size == 1152
    assert cfg.updates_per_rollout(576) == 2  # with the recipe's global batch of 576
    assert cfg.clip_high == 0.2
    assert cfg.loss_aggregation == "token"


def test_every_field_has_a_docstring():
    import ast
    import inspect

    from nemotron_plugins.rl import config as mod

    tree = ast.parse(inspect.getsource(mod))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GRPOConfig")
    body = cls.body
    names = []
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign):
            nxt = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), node.target.id
            names.append(node.target.id)
    assert "epsilon_high" in names and "beta" in names


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_generations": 1}, "num_generations"),
        ({"epochs_per_rollout": 0}, "epochs_per_rollout"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"beta": -1.0}, "beta"),
        ({"loss_aggregation": "mean"}, "loss_aggregation"),
        ({"algorithm": "ppo"}, "algorithm"),
        ({"num_prompts_per_rollout": 4, "refill_prompts": 5}, "refill_prompts"),
        ({"refill_prompts": 0}, "refill_prompts"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(GRPOConfigError, match=rf"GRPOConfig\.{field} ="):
        GRPOConfig(**changes)


def test_replace_rejects_unknown_fields():
    with pytest.raises(GRPOConfigError, match="unknown GRPOConfig field"):
        GRPOConfig().replace(epsilonn=0.3)
    assert GRPOConfig().replace(epsilon_high=0.28).clip_high == 0.28


def test_rloo_defaults():
    cfg = rloo_config()
    assert cfg.algorithm == "rloo" and cfg.leave_one_out_baseline and not cfg.normalize_advantages_by_std
    assert cfg.num_prompts_per_rollout == 128 and cfg.updates_per_rollout(128 * 8) == 1
    assert grpo_config(beta=0.01).beta == 0.01


def test_plugins_registered():
    assert {"grpo", "rloo", "loo_grpo", "dr_grpo", "gspo", "dapo"} <= set(ALGORITHMS.names())
    assert {"megatron", "vllm", "openai"} <= set(ROLLOUT_ENGINES.names())
    assert ALGORITHMS.get("rloo").default_config().leave_one_out_baseline
