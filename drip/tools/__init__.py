"""Command-line tools built on the ``drip`` library, each run as ``python -m drip.tools.<name>``.

train (open_clip_train's loop with DRIP's loss and schedule), zero_shot, classify (linear probe / fine-tune),
calibrate (the eval thresholds on sample images), report (one table per run), visualize (segments drawn on an
image) and boundary_signal. Tools never import each other; the helpers only they use live here too (``files``: tool
inputs and result files; ``stats``: token statistics; ``flip_signal``: the boundary-signal measurement;
``train_checkpoints``, ``rng_state``: train's resumable checkpoints), the rest in the library
(``drip.calibration``, ``drip.open_clip_integration``). Every tool that builds an open_clip model calls
``drip.register_open_clip()`` first. Library code never imports this package.
"""
