"""Tiny CPU recipes: SFT then GRPO on a ~1M-parameter heterogeneous model, synthetic addition data, no downloads.

The SFT stage trains on reasoning-on traces of 25,600 distinct problems (1200 steps x 64 rows, each problem seen 3
times, lr 1e-3 with a cosine decay to 1e-4) carrying two deliberate mistakes drawn independently, so SFT leaves
headroom: half of the traces forget one carry (SYSTEM.md section 5; the answer follows from the mistake) and 40% of
the answers are written reversed. GRPO (16 prompts x 8 responses, clip 0.2, no KL, lr 5e-5, one update per rollout,
uniform-reward groups skipped and not refilled, ``math`` + ``think_format`` rewards) then removes both mistakes.
Both stages use reasoning-on data (the RL prompts are reasoning-on). ``tiny_puzzle_grpo_cpu`` starts from the SFT
recipe's checkpoint and ``nemotron-plugins train`` runs the SFT stage first when that checkpoint is missing.

Measured (2 CPU cores, n = 500 held-out prompts, sampled at T=1, greedy in brackets), before -> after GRPO: seed
1234 (the default) 0.246 (0.464) -> 0.914 (0.984) in 188 CPU s of GRPO; the other seeds and the earlier recipe
(4,000 problems, one mistake, whose outcome depended on the seed) are in the README ("First run").
"""

from __future__ import annotations

import dataclasses

from nemotron_plugins.launch.recipe_config import (
    DataConfig,
    EvalConfig,
    GenerationConfig,
    RecipeConfig,
    RewardSpec,
    SyntheticDataConfig,
)
from nemotron_plugins.runtime.config import LoggingConfig, OptimizerConfig, ParallelConfig
from recipes.common import (
    tiny_cluster,
    tiny_grpo_algorithm,
    tiny_model,
    tiny_sft_optimizer,
)

SEQ_LENGTH = 256
MAX_PROMPT_TOKENS = 128
MAX_NEW_TOKENS = 64


SFT_PROBLEMS = 25_600
"""Synthetic training problems of the SFT stage (its 1200 steps x 64 rows see each one 3 times: with 4,000 problems
seen 12.8 times the tiny model memorised which were corrupted and learned to read operands at a seed-dependent
point); the GRPO stage writes the same problems (same seed) so its held-out prompts are exactly the SFT stage's
held-out problems, disjoint from everything SFT trained on."""

CORRUPT_FRACTION = 0.5
"""SFT problems whose trace forgets one carry (SYSTEM.md section 5)."""
REVERSED_ANSWER_FRACTION = 0.4
"""SFT problems whose answer is also written reversed, drawn independently: two mistakes, each below half of the
data, so the SFT policy's most likely output stays right at both and sampled accuracy starts near 0.28."""


HELDOUT_PROBLEMS = 500
"""Held-out problems of both stages (never trained on); every one is evaluated."""


def _data(
    *,
    max_seq_length: int,
    num_train_samples: int | None = None,
    corrupt_fraction: float = 0.0,
    reversed_answer_fraction: float = 0.0,
) -> DataConfig:
    """The synthetic addition task, chosen explicitly; both stages write the same problems (same seed)."""
    return DataConfig(
        dataset="synthetic_addition",
        reasoning="on",
        chat_template="llama-nemotron-super",
        tokenizer="tiny",
        max_seq_length=max_seq_length,
        num_train_samples=num_train_samples,
        synthetic=SyntheticDataConfig(
            problems=SFT_PROBLEMS,
            heldout_problems=HELDOUT_PROBLEMS,
            corrupt_fraction=corrupt_fraction,
            reversed_answer_fraction=reversed_answer_fraction,
            min_value=10,
            max_value=999,
            seed=0,
        ),
    )


def tiny_puzzle_sft_cpu_config() -> RecipeConfig:
    """SFT of the tiny Puzzle model on synthetic addition, half of the traces with a forgotten carry and 40% of the
    answers reversed (one CPU thread: ~1,200 CPU s for the 1200 steps plus the held-out evaluation)."""
    return RecipeConfig(
        name="tiny_puzzle_sft_cpu",
        task="sft",
        description="Tiny Puzzle model, SFT on synthetic addition (forgotten carries, reversed answers: room for GRPO), CPU",
        model=tiny_model(SEQ_LENGTH),
        parallel=ParallelConfig(),
        optimizer=dataclasses.replace(tiny_sft_optimizer(), lr_schedule="cosine", min_lr=1e-4),
        logging=LoggingConfig(log_interval=50, progress_bar=False),
        cluster=tiny_cluster(),
        data=_data(
            max_seq_length=SEQ_LENGTH,
            corrupt_fraction=CORRUPT_FRACTION,
            reversed_answer_fraction=REVERSED_ANSWER_FRACTION,
        ),
        evaluation=EvalConfig(num_samples=HELDOUT_PROBLEMS, at_start=False, max_new_tokens=64, batch_size=64),
        train_steps=1200,
        micro_batch_size=64,
        global_batch_size=64,
        seed=1234,
    )


def tiny_puzzle_grpo_cpu_config() -> RecipeConfig:
    """GRPO of the tiny SFT model on synthetic addition with an exact-answer reward (CPU, a few minutes)."""
    return RecipeConfig(
        name="tiny_puzzle_grpo_cpu",
        task="grpo",
        description="Tiny Puzzle model, GRPO on synthetic addition from the tiny SFT checkpoint, CPU",
        model=tiny_model(SEQ_LENGTH),
        parallel=ParallelConfig(),
        optimizer=OptimizerConfig(lr=5e-5, clip_grad=1.0),
        logging=LoggingConfig(log_interval=10, progress_bar=False),
        cluster=tiny_cluster(),
        data=_data(max_seq_length=MAX_PROMPT_TOKENS, num_train_samples=1024),
        evaluation=EvalConfig(
            num_samples=HELDOUT_PROBLEMS,
            interval=20,
            greedy=True,
            accuracy_reward="math",
            format_reward="think_format",
        ),
        sampler=None,  # prompts uniformly at random (the measured run); the curriculum is one override away
        rewards=[RewardSpec(name="math", weight=1.0), RewardSpec(name="think_format", weight=0.5)],
        # Groups without signal are skipped and not refilled (refill rounds cost 1.3-1.7x the CPU time and did not
        # raise the held-out accuracy of this task: README, "The tiny run").
        algorithm=tiny_grpo_algorithm(16).replace(max_refill_rounds=0),
        generation=GenerationConfig(
            engine="megatron", temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, batch_size=128
        ),
        train_steps=80,
        micro_batch_size=64,
        global_batch_size=128,
        seed=1234,
        init_from_recipe="tiny_puzzle_sft_cpu",
    )
