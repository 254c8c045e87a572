"""Data for llava-drip: the synthetic demo world generator (`playground.demo_world`) and the real datasets' tree.

Real datasets live under `playground/data/` (git-ignored); see `playground/README.md` for the expected layout.
"""
