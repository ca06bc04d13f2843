"""Instruction-following RL (IF-RL) with RLOO: the tiny CPU demonstration (SYSTEM.md section 3, issue 18).

The paper runs RLOO for < 120 steps on batches of 128 prompts, rewarded by an IFEval-style instruction verifier on
prompts carrying 1-10 synthetic instructions (the Nano / Super / Ultra recipes ``llama_nemotron_*_rloo_*``:
128 prompts x 8 responses, 100 steps, the ``ifeval`` reward). The tiny recipes run the same algorithm on the
synthetic verifiable-instruction task of :mod:`nemotron_plugins.data.synthetic_instructions` (write its files
first)::

    python -m nemotron_plugins.data.synthetic_instructions write runs/ifrl_data
    nemotron-plugins train tiny_ifrl_sft_cpu       # SFT on replies that obey each instruction with probability 0.5
    nemotron-plugins train tiny_ifrl_rloo_cpu      # RLOO from the SFT checkpoint, held-out ifeval before / after

The RLOO run reports the held-out mean ``ifeval`` score (the fraction of a prompt's instructions followed);
``python -m nemotron_plugins.data.synthetic_instructions evaluate`` adds IFEval's prompt-level and
instruction-level strict accuracy of any checkpoint on the same held-out prompts (``docs/post_training.md``).

Measured (2 shared CPU cores, seed 0 data, seed 1234 runs): held-out over 500 prompts, sampled at T=1, prompt-level
strict 0.128 -> 0.450 and instruction-level 0.325 -> 0.682 after 60 RLOO steps (greedy 0.150 -> 0.486 and
0.375 -> 0.721).
"""

from __future__ import annotations

from nemotron_plugins.launch.recipe_config import (
    EvalConfig,
    GenerationConfig,
    RecipeConfig,
    RewardSpec,
)
from nemotron_plugins.runtime.config import LoggingConfig, OptimizerConfig, ParallelConfig
from recipes.common import (
    rloo_algorithm,
    tiny_cluster,
    tiny_data,
    tiny_model,
    tiny_sft_optimizer,
)

TINY_DATA_DIR = "runs/ifrl_data"
"""Where ``python -m nemotron_plugins.data.synthetic_instructions write`` puts the task's files (relative to the
working directory, as ``runs/`` is)."""
SEQ_LENGTH = 256
"""Prompt + reply tokens (the longest SFT row of the default task is 229 characters-tokens)."""
MAX_PROMPT_TOKENS = 176
"""The longest rendered prompt of the default task is 173 tokens."""
MAX_NEW_TOKENS = 80
"""The longest obeying reply of the default task is 71 tokens plus ``<|eot_id|>``."""
HELDOUT = 500
"""Held-out prompts evaluated (topic-word sets never trained on)."""


def tiny_ifrl_sft_cpu_config() -> RecipeConfig:
    """SFT of the tiny Puzzle model on the instruction task; each reply obeys each of its instructions with
    probability 0.5, so the SFT policy leaves room for RL."""
    return RecipeConfig(
        name="tiny_ifrl_sft_cpu",
        task="sft",
        description="Tiny Puzzle model, SFT on synthetic verifiable instructions (half-obeyed replies), CPU",
        model=tiny_model(SEQ_LENGTH),
        parallel=ParallelConfig(),
        optimizer=tiny_sft_optimizer(),
        logging=LoggingConfig(log_interval=25, progress_bar=False),
        cluster=tiny_cluster(),
        data=tiny_data(
            f"{TINY_DATA_DIR}/sft.jsonl",
            max_seq_length=SEQ_LENGTH,
            reasoning="off",
        ),
        train_steps=500,
        micro_batch_size=64,
        global_batch_size=64,
        seed=1234,
    )


def tiny_ifrl_rloo_cpu_config() -> RecipeConfig:
    """RLOO of the tiny SFT policy with the ``ifeval`` reward (fraction of instructions followed): 16 prompts x 8
    replies per step (one update per rollout, leave-one-out baseline, no std division, clip 0.2, no KL);
    held-out mean ``ifeval`` score over 500 prompts before and after (sampled at T=1 and greedy)."""
    return RecipeConfig(
        name="tiny_ifrl_rloo_cpu",
        task="rloo",
        description="Tiny IF-RL: RLOO with the ifeval verifier on synthetic instructions, from the tiny SFT, CPU",
        model=tiny_model(SEQ_LENGTH),
        parallel=ParallelConfig(),
        optimizer=OptimizerConfig(lr=5e-5, clip_grad=1.0, weight_decay=0.0),
        logging=LoggingConfig(log_interval=5, progress_bar=False),
        cluster=tiny_cluster(),
        data=tiny_data(
            f"{TINY_DATA_DIR}/prompts_train.jsonl",
            max_seq_length=MAX_PROMPT_TOKENS,
            eval_path=f"{TINY_DATA_DIR}/prompts_heldout.jsonl",
            reasoning="off",
        ),
        evaluation=EvalConfig(num_samples=HELDOUT, at_start=True, greedy=True, accuracy_reward="ifeval"),
        sampler=None,
        rewards=[RewardSpec(name="ifeval", weight=1.0)],
        algorithm=rloo_algorithm(prompts=16, generations=8),
        generation=GenerationConfig(
            engine="megatron", temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, batch_size=128
        ),
        train_steps=60,
        micro_batch_size=64,
        global_batch_size=128,
        seed=1234,
        init_from_recipe="tiny_ifrl_sft_cpu",
    )
