"""Command-line tools built on the ``drip`` library, each run as ``python -m drip.tools.<name>``.

train (open_clip_train's loop with DRIP's loss and schedule), zero_shot, classify (linear probe / fine-tune),
calibrate (the eval thresholds on sample images), report (one table per run) and visualize (segments drawn on an
image). Tools import the library and never each other; helpers they share live in the library
(``drip.files``, ``drip.stats``, ``drip.calibration``, ``drip.open_clip_integration``). Every tool that builds an
open_clip model calls ``drip.register_open_clip()`` first.
"""
