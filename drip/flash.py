"""Whether flash-attn really imports: one attempt per process, shared by DRIP's packed attention (``drip.layers``,
the varlen kernel) and LLaVA's choice of the LLM's attention (``llava.model.builder``, ``flash_attention_2``).

Installed is not enough: a wheel built for another torch / CUDA, or flash-attn 4's ``flash_attn.cute`` alone, is found
by the package metadata but fails at import (or lacks the flash-attn 2 functions), so it is imported once and a
failure warned about once. Model-free, so any of ``llava`` may use it (``DRIP_SHARED`` in the architecture rules).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import NamedTuple

logger = logging.getLogger(__name__)


class FlashAttn(NamedTuple):
    func: Callable  # flash_attn_func: padded [B, L, H, hd] batches (what transformers' flash_attention_2 calls)
    varlen_func: Callable  # flash_attn_varlen_func: packed [T, H, hd] with cu_seqlens (DRIP's packed attention)


@functools.cache  # one import attempt per process: a broken install warns once, not at every block or load
def flash_attn_kernels() -> FlashAttn | None:
    """flash-attn 2's kernels, or None: not installed, or (one warning) installed but failing to import."""
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except Exception as e:  # ImportError (a missing name or extension), OSError (a CUDA library), RuntimeError
        if isinstance(e, ModuleNotFoundError) and e.name == "flash_attn":  # not installed: nothing to warn about
            return None
        logger.warning(
            "flash-attn is installed but does not import (%s: %s); its kernels are not used", type(e).__name__, e
        )
        return None
    return FlashAttn(flash_attn_func, flash_attn_varlen_func)
