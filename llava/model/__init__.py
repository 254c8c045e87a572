"""The LLaVA-DRIP model: vision tower, projector, the splice of visual tokens into the LLM's inputs, the LLM.

Importing this package stays light (a submodule such as ``llava.model.splice`` pulls in no transformers
model code) and registers nothing. LLaVA's names resolve on first use: ``from llava.model import
LlavaLlamaForCausalLM`` imports ``llava.model.language_model.llava_llama``; ``register_auto_classes()`` maps
``model_type="llava_llama"`` in ``AutoConfig`` / ``AutoModelForCausalLM`` (``load_pretrained_model`` calls it).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LlavaLlamaForCausalLM": "llava.model.language_model.llava_llama",
    "LlavaLlamaModel": "llava.model.language_model.llava_llama",
    "LlavaLlamaConfig": "llava.model.language_model.llava_llama",
    "LlavaConfig": "llava.model.language_model.llava_llama",
    "LlavaCausalLMOutputWithPast": "llava.model.language_model.llava_llama",
    "MultimodalConfig": "llava.model.config",
    "PDropConfig": "llava.model.config",
    "RuntimeConfig": "llava.model.runtime",
    "load_pretrained_model": "llava.model.builder",
    "register_auto_classes": "llava.model.language_model.llava_llama",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'llava.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
