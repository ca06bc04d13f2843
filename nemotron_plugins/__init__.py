"""nemotron-plugins: the Llama-Nemotron training system as plugins for Megatron-core and NeMo."""

__version__ = "0.1.0"
