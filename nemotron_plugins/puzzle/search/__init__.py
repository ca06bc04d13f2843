"""Puzzle search: from a dense parent to a searched, fused child, one module per stage.

``library`` (child blocks from the parent: pruned FFNs, pooled KV heads, linear replacements, no-ops), ``score``
(replace-1-block KL to the parent + per-block cost), ``mip`` (the HiGHS MIP with diversity and infeasibility
explanations), ``realize`` (the chosen child as an HF checkpoint + report), ``fuse_planner`` (FFN Fusion dependency
metric and checkpoint-level fusion). Every stage reads and writes files in one run directory (``rundir``).
"""
