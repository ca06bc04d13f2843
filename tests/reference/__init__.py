"""Independent plain-PyTorch reference implementations used as test oracles."""
