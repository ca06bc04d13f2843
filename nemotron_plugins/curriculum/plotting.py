"""A picture of a curriculum plan: share of each pass-rate bin per batch (heatmap) and the mean pass rate (line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nemotron_plugins.curriculum.planning import bin_edges


def plot_plan(
    bin_counts: np.ndarray,
    mean_pass_rates: np.ndarray,
    path: str | Path,
    *,
    title: str = "Progressive curriculum: pass-rate mix per batch",
) -> Path:
    """Draw the plan to a PNG (matplotlib, Agg backend).

    Args:
        bin_counts: ``(num_batches, num_bins)`` prompts per bin per batch (from ``EpochPlan.bin_counts``).
        mean_pass_rates: Mean pass rate of each batch.
        path: Output PNG path.
        title: Figure title.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    counts = np.asarray(bin_counts, dtype=np.float64)
    num_batches, num_bins = counts.shape
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    edges = bin_edges(num_bins)
    used = np.flatnonzero(counts.sum(axis=0) > 0)
    low, high = (edges[used[0]], edges[used[-1] + 1]) if len(used) else (0.0, 1.0)

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=120)
    image = ax.imshow(
        shares.T,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(0.5, num_batches + 0.5, 0.0, 1.0),
        vmin=0.0,
        vmax=max(float(shares.max()), 1e-9),
    )
    batches = np.arange(1, num_batches + 1)
    ax.plot(batches, mean_pass_rates, color="#ff5a36", linewidth=2.2, label="mean pass rate of batch")
    ax.set_ylim(low, high)
    ax.set_xlim(0.5, num_batches + 0.5)
    ax.set_xlabel(f"batch (1 .. {num_batches}; early = first trained)")
    ax.set_ylabel("pass rate (high = easy)")
    ax.set_title(title)
    ax.legend(loc="upper right", framealpha=0.85)
    colorbar = fig.colorbar(image, ax=ax, pad=0.02)
    colorbar.set_label("share of the batch from this pass-rate bin")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
