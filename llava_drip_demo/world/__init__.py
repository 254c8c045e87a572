"""Building blocks of the synthetic demo world: scene specs, rendering, questions and dataset builders.

`llava_drip_demo.demo_world` is the entry point; the modules here are pure (no file writes) except `render.save_png`.
"""
