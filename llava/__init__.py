"""LLaVA-1.5 with variable-length visual tokens (DRIP towers) and PyramidDrop."""
