"""Builtin plugin registrations for this area: lazy ``"module:attr"`` targets only, no heavy imports."""

from __future__ import annotations


def register() -> None:
    """Register this area's builtin plugins: the curriculum batch samplers."""
    from nemotron_plugins.registry import BATCH_SAMPLERS

    BATCH_SAMPLERS.register(
        "progressive_gaussian", "nemotron_plugins.curriculum.sampler:ProgressiveGaussianBatchSampler"
    )
    BATCH_SAMPLERS.register("random", "nemotron_plugins.curriculum.sampler:RandomBatchSampler")
