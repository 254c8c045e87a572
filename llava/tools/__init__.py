"""Experiments and one-off tools on top of LLaVA, each run as ``python -m llava.tools.<name>``.

``boundary_signal`` (does DRIP's boundary predictor get a task signal from the LM loss? with ``lm_row_loss``, the
per-sample LM loss as a function of forced boundaries), ``image_reliance`` (do the answers depend on the image?),
``tower_export`` (a drip-package ViT swapped for its HF CLIP export, so CLIP-only reductions run on it),
``patch_slimming_search`` (the command line of Patch Slimming's calibration search) and ``calibrate_connector`` (a
saved checkpoint's DRIP-connector threshold). This layer sits above
``model``, ``train`` and ``eval``; nothing in them imports it (tests/test_layering.py).
"""
