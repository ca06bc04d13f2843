"""Test-only rewards that misbehave on purpose, importable by pool worker processes."""

from __future__ import annotations

import os
import time

from nemotron_plugins.rewards.base import RewardResult, SampleReward


class MisbehavingReward(SampleReward):
    """Scores ``len(completion)``, except: ``"hang"`` loops forever in Python, ``"sleep"`` blocks in C,
    ``"nap"`` sleeps 50 ms, ``"crash"`` kills its own process, ``"hog"`` allocates without bound, ``"raise"`` raises."""

    name = "misbehaving"

    def score_sample(self, sample):
        text = sample.completion
        if text == "hang":
            while True:
                pass
        if text == "sleep":
            time.sleep(3600)
        if text == "crash":
            os._exit(7)
        if text == "hog":
            blocks = []
            while True:
                blocks.append(bytearray(64 * 1024 * 1024))
        if text == "nap":
            time.sleep(0.05)
        if text == "raise":
            raise ValueError("told to raise")
        return RewardResult(score=float(len(text)), components={"pid": float(os.getpid())})
