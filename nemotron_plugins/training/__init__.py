"""One training stack for SFT, RL and distillation, read from the one run config (``RecipeConfig``).

- :mod:`~nemotron_plugins.training.setup`: the architecture, tokenizer, megatron-core model, initial weights, megatron
  DDP + optimizer (distributed optimizer included) and the LR scheduler, each built from the recipe's config tree.
- :mod:`~nemotron_plugins.training.step`: one optimizer step on megatron's pipeline schedules.
- :mod:`~nemotron_plugins.training.checkpointing`: distributed checkpoints (model, optimizer, scheduler, data
  position, RNG) that save atomically and resume at any layout.
"""
