"""Recipe configs, overrides, pre-launch validation and launchers (local, torchrun, NeMo-Run, sbatch).

Everything here is plain data and arithmetic until a launcher runs: building and validating a recipe never imports
torch, megatron-core or NeMo-Run.
"""
