"""Every random number generator a training step draws from, as a checkpoint entry (for an exact resume).

open_clip_train's checkpoints hold model, optimizer and scaler only; its main reseeds on resume, so a resumed run
draws other Gumbel noise (``drip.boundary.gumbel_sigmoid`` uses torch's global generator), another data order
(the loader's RandomSampler seeds itself from that generator each epoch) and other augmentations. The states are
kept as tensors, lists and numbers so that ``torch.load(weights_only=True)`` (open_clip_train's ``pt_load``) reads
them. Not covered: the RNGs inside persistent data-loader worker processes (``--workers`` > 0), which only those
processes hold.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """This process's torch CPU / CUDA, numpy and Python generator states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set every generator ``capture_rng`` recorded (CUDA ones only where this process sees as many devices)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
