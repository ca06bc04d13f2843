"""Tool-calling RL in Nemotron-Research-Tool-N1's setting (arXiv 2505.00024; SYSTEM.md sections 2-3, issue 18).

Tool-N1 trains with GRPO and a binary reward: 1 only when the reply has the reasoning format (``<think>...</think>``)
and a tool-call block whose calls equal the gold calls (order of calls and of argument keys ignored, values exact),
else 0 (the ``tool_call`` reward). Prompts carry their tools in the system turn: the row's ``tools`` column is
rendered by the ``llama-nemotron-nano`` template as ``<AVAILABLE_TOOLS>[...]</AVAILABLE_TOOLS>``, the model answers
``<think>...</think><TOOLCALL>[{"name": ..., "arguments": ...}]</TOOLCALL>``, and the row's ``ground_truth`` (the
gold call list) reaches the reward.

The tiny CPU recipes demonstrate it on the synthetic task of :mod:`nemotron_plugins.data.synthetic_tools` (write its
files first; see ``docs/tool_calling_rl.md`` for the measured figures)::

    python -m nemotron_plugins.data.synthetic_tools write runs/tool_data
    nemotron-plugins train tiny_tool_sft_cpu        # SFT on replies that are right only half of the time
    nemotron-plugins train tiny_tool_grpo_cpu       # GRPO, exact-call accuracy on held-out prompts before / after

Tool-N1's published settings (``llama_nemotron_nano_8b_tool_grpo_8gpu_h100_bf16``) come from the authors' release,
github.com/NVlabs/Tool-N1: ``qwen_rl.sh`` and ``verl/examples/agent/qwen.sh`` (verl GRPO), and its verl
``ppo_trainer.yaml`` defaults for what the scripts leave unset:

===========================  ==========================================================================
setting                      value (source)
===========================  ==========================================================================
prompts per rollout          1024 (``BA_SIZE`` -> ``data.train_batch_size``)
responses per prompt         5 (``actor_rollout_ref.rollout.n=5``)
optimizer step               256 prompts = 1280 responses (verl default ``ppo_mini_batch_size: 256``):
                             4 updates per rollout, 1 PPO epoch (default ``ppo_epochs: 1``)
learning rate                1e-6 (``LR``), constant (no schedule set)
KL to the reference          coefficient 1e-3 (``KL_COE``), as a loss term, ``low_var_kl`` = the k3
                             estimator (our ``algorithm.beta``)
entropy bonus                0 (``ENTROPY``)
clip                         0.2 (verl default ``clip_ratio``)
sampling                     temperature 0.7 (``TEMPERATURE``), top_p 1 (verl default)
lengths                      prompt 4096, response 8192 tokens (``MAX_PROMPT_LEN``, ``MAX_RES``)
hardware                     1 node x 8 GPUs, rollout TP2 (``N_GPUS``, ``ROLLOUT_TP_SIZE``)
duration                     7 epochs over the training set (``EPOCH``)
===========================  ==========================================================================

Not known from the release: the GPU model (the recipe assumes H100), the number of rollout steps (7 epochs of a
training set whose size after the authors' filtering is not stated in the scripts; ``train_steps`` below is a
placeholder to override), and the Qwen-2.5 base models' role here: Tool-N1 trained Qwen-2.5-7B/14B-Instruct, this
recipe applies the same settings to Llama-Nemotron Nano 8B with its own chat template.
"""

from __future__ import annotations

import dataclasses

from nemotron_plugins.launch.recipe_config import (
    ClusterConfig,
    DataConfig,
    EvalConfig,
    GenerationConfig,
    RecipeConfig,
    RewardSpec,
)
from nemotron_plugins.rl.config import GRPOConfig
from nemotron_plugins.runtime.config import LoggingConfig, OptimizerConfig, ParallelConfig
from recipes.common import (
    NANO_8B_CONFIG,
    NEMO_CONTAINER,
    gpu_logging,
    paper_model,
    tiny_cluster,
    tiny_data,
    tiny_grpo_algorithm,
    tiny_model,
    tiny_sft_optimizer,
    vllm_generation,
)

CHAT_TEMPLATE = "llama-nemotron-nano"
"""The template that renders tools, tool calls and tool results."""

TINY_DATA_DIR = "runs/tool_data"
"""Where ``python -m nemotron_plugins.data.synthetic_tools write`` puts the tiny task's files (relative to the
working directory, as ``runs/`` is)."""
TINY_SEQ = 704
"""Longest prompt + reply of the tiny task in tokens (prompts up to ~490 characters with three tools, two-call
replies up to ~190): the ``tiny`` tokenizer has one id per character."""
TINY_MAX_PROMPT = 512
TINY_MAX_NEW_TOKENS = 192
HELDOUT = 200
"""Held-out prompts evaluated before and after GRPO (every one distinct, none of their requests trained on)."""


def tiny_tool_sft_cpu_config() -> RecipeConfig:
    """SFT of the tiny Puzzle model on the synthetic tool task, tools in the system turn (nano template); half of
    the replies are wrong (the sibling tool, a number as a string, or the calls named in prose), so the SFT policy
    leaves room for RL (800 steps with a cosine decay to 1e-4: the measured run of docs/tool_calling_rl.md, ~50 min
    on one CPU thread)."""
    return RecipeConfig(
        name="tiny_tool_sft_cpu",
        task="sft",
        description="Tiny Puzzle model, SFT on the synthetic tool-calling task (half the replies wrong), CPU",
        model=tiny_model(TINY_SEQ, max_position_embeddings=TINY_SEQ),
        parallel=ParallelConfig(),
        optimizer=dataclasses.replace(tiny_sft_optimizer(), lr_schedule="cosine", min_lr=1e-4),
        logging=LoggingConfig(log_interval=10, progress_bar=False),
        cluster=tiny_cluster(),
        data=tiny_data(
            f"{TINY_DATA_DIR}/sft.jsonl",
            max_seq_length=TINY_SEQ,
            reasoning="on",
            chat_template=CHAT_TEMPLATE,
        ),
        train_steps=800,
        micro_batch_size=32,
        global_batch_size=32,
        seed=1234,
    )


def tiny_tool_grpo_cpu_config() -> RecipeConfig:
    """GRPO of the tiny SFT policy with Tool-N1's binary ``tool_call`` reward (think format required, exact calls);
    held-out exact-call accuracy (sampled at T=1 and greedy) over 200 prompts before and after. 16 prompts x 8
    replies per rollout, one update of all 128 (on-policy), groups without signal skipped and not refilled, 80
    steps (~12 s each on one CPU thread): the measured run of docs/tool_calling_rl.md."""
    return RecipeConfig(
        name="tiny_tool_grpo_cpu",
        task="grpo",
        description="Tiny Tool-N1-style GRPO: binary tool_call reward from the tiny tool SFT checkpoint, CPU",
        model=tiny_model(TINY_SEQ, max_position_embeddings=TINY_SEQ),
        parallel=ParallelConfig(),
        optimizer=OptimizerConfig(lr=5e-5, clip_grad=1.0),
        logging=LoggingConfig(log_interval=1, progress_bar=False),
        cluster=tiny_cluster(),
        data=tiny_data(
            f"{TINY_DATA_DIR}/prompts_train.jsonl",
            max_seq_length=TINY_MAX_PROMPT,
            eval_path=f"{TINY_DATA_DIR}/prompts_heldout.jsonl",
            reasoning="on",
            chat_template=CHAT_TEMPLATE,
        ),
        evaluation=EvalConfig(num_samples=HELDOUT, at_start=True, greedy=True, accuracy_reward="tool_call"),
        sampler=None,
        rewards=[RewardSpec(name="tool_call", weight=1.0, options={"require_think": True})],
        algorithm=tiny_grpo_algorithm(16).replace(max_refill_rounds=0),
        generation=GenerationConfig(
            engine="megatron", temperature=1.0, top_p=1.0, max_new_tokens=TINY_MAX_NEW_TOKENS, batch_size=128
        ),
        train_steps=80,
        micro_batch_size=64,
        global_batch_size=128,
        seed=1234,
        init_from_recipe="tiny_tool_sft_cpu",
    )


def llama_nemotron_nano_8b_tool_grpo_8gpu_h100_bf16_config() -> RecipeConfig:
    """Tool-calling GRPO of Nano 8B with Tool-N1's published settings (see the module docstring for each number's
    source): 1024 prompts x 5 responses per rollout, 4 updates of 1280 responses, lr 1e-6, k3 KL 1e-3, clip 0.2,
    temperature 0.7, binary ``tool_call`` reward; 1 x 8 H100, training TP2 + SP, vLLM rollouts at TP2.

    ``data.path`` / ``data.eval_path``: RL prompt rows with ``messages``, ``tools`` (JSON-schema tool objects) and
    ``ground_truth`` (the gold ``[{"name", "arguments"}]`` list), e.g. converted from Tool-N1's ToolACE / xLAM
    subsets. ``train_steps`` is not published (7 epochs over the authors' data); 100 is a placeholder.
    """
    return RecipeConfig(
        name="llama_nemotron_nano_8b_tool_grpo_8gpu_h100_bf16",
        task="grpo",
        description="Tool-calling RL (Tool-N1 settings: binary tool_call reward, GRPO), 1 x 8 H100",
        model=paper_model(NANO_8B_CONFIG, 4096 + 8192),
        parallel=ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True, use_distributed_optimizer=True),
        optimizer=OptimizerConfig(lr=1e-6, bf16=True),
        logging=gpu_logging(),
        cluster=ClusterConfig(nodes=1, devices_per_node=8, device="cuda", container_image=NEMO_CONTAINER),
        data=DataConfig(dataset="post_training", reasoning="on", chat_template=CHAT_TEMPLATE, max_seq_length=4096),
        evaluation=EvalConfig(num_samples=500, interval=10, greedy=True),  # accuracy: the first reward, tool_call
        rewards=[RewardSpec(name="tool_call", weight=1.0, options={"require_think": True})],
        algorithm=GRPOConfig(
            algorithm="grpo",
            num_prompts_per_rollout=1024,
            num_generations=5,
            normalize_advantages_by_std=True,
            skip_uniform_groups=False,  # verl keeps uniform groups (zero advantage) in the token mean
            epsilon=0.2,
            beta=1e-3,
        ),
        generation=_paper_generation(),
        train_steps=100,
        micro_batch_size=1,
        global_batch_size=1280,
        recompute="full",
    )


def _paper_generation() -> GenerationConfig:
    generation = vllm_generation(2, max_new_tokens=8192, max_num_seqs=64)
    generation.temperature = 0.7  # Tool-N1's TEMPERATURE (the reasoning GRPO recipes sample at 1.0)
    return generation
