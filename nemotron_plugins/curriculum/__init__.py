"""Curriculum for RL prompts (LN-Ultra): pass-rate estimation, filtering, and progressive Gaussian batching.

Modules: ``records`` (JSONL input and validation), ``pass_rate`` (generator protocol and resumable estimation),
``openai_generator`` (OpenAI-compatible HTTP generator), ``filtering`` (pass-rate thresholds with a per-bin report),
``planning`` (vectorised epoch planning), ``sampler`` (batch samplers, registered in ``BATCH_SAMPLERS`` as
``progressive_gaussian`` and ``random``), ``plotting`` (a PNG of a plan).
"""
