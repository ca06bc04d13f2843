"""Tiny CPU recipes: the whole SFT -> GRPO pipeline on a ~1M-parameter Puzzle model, no downloads."""
