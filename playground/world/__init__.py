"""Building blocks of the synthetic demo world: scene specs, rendering, questions and dataset builders.

`playground.demo_world` is the entry point; the modules here are pure (no file writes) except `render.save_png`.
"""
