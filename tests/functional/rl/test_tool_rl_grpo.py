"""The tiny Tool-N1-style GRPO recipe runs: prompts with tools in the system turn, the binary ``tool_call`` reward,
held-out exact-call accuracy before and after (a few steps from a random initialisation, one CPU process)."""

from __future__ import annotations

import json

from nemotron_plugins.data.synthetic_tools import write_tool_task
from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.rl.controller import run_grpo


def test_tiny_tool_grpo_recipe_runs_a_few_steps_with_the_tool_call_reward(tmp_path) -> None:
    data = tmp_path / "tool_data"
    write_tool_task(data, sft_rows=8, rl_prompts=8, heldout=2, seed=0)
    config = build_recipe(
        "tiny_tool_grpo_cpu",
        [
            f"output_dir={tmp_path / 'run'}",
            f"data.path={data / 'prompts_train.jsonl'}",
            f"data.eval_path={data / 'prompts_heldout.jsonl'}",
            "init_from_recipe=null",
            "model.init=random",
            "evaluation.num_samples=2",
            "algorithm.num_prompts_per_rollout=2",
            "algorithm.num_generations=4",
            "algorithm.skip_uniform_groups=false",
            "generation.max_new_tokens=8",
            "global_batch_size=8",
            "micro_batch_size=8",
            "optimizer.lr=1e-3",
            "train_steps=2",
            "torch_threads=1",
        ],
    )
    assert config.evaluation.accuracy_reward == "tool_call" and config.data.chat_template == "llama-nemotron-nano"
    result = run_grpo(config)
    assert result.steps == 2 and len(result.history) == 2
    # A random model writes no call block: every reply is a format failure scored 0 (a verdict, not a failure).
    for evaluation in (result.before, result.after):
        assert evaluation["n"] == 2.0
        assert evaluation["accuracy_sampled"] == 0.0 and evaluation["accuracy_greedy"] == 0.0
        assert evaluation["reward_failures_sampled"] == 0.0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/tool_call" in json.dumps(m) for m in metrics)
    # Every held-out reply is saved with its scores, before and after, sampled and greedy.
    for tag, evaluation in (("before", result.before), ("after", result.after)):
        saved = [json.loads(line) for line in (tmp_path / "run" / "eval" / f"{tag}.jsonl").read_text().splitlines()]
        assert [(r["decode"], r["index"]) for r in saved] == [(d, i) for d in ("sampled", "greedy") for i in range(2)]
        assert all(r["id"].startswith("tools-heldout-") and isinstance(r["reply"], str) for r in saved)
        for decode in ("sampled", "greedy"):
            scores = [r["scores"]["tool_call"] for r in saved if r["decode"] == decode]
            assert sum(scores) / len(scores) == evaluation[f"accuracy_{decode}"]
