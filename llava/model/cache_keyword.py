"""The name transformers gives the KV cache: ``cache`` from transformers 5.24 on, ``past_key_values`` before.

The rename touched the ``forward`` keyword of the models and their decoder layers and the field of their outputs
(``BaseModelOutputWithPast``, ``CausalLMOutputWithPast``). transformers 5.24+ still accepts ``past_key_values`` as a
keyword (with a warning), but 5.0-5.23 silently drop ``cache`` into ``**kwargs`` and have no ``cache`` field, so
every call into a transformers module and every output this package builds or reads names the cache through these
helpers, which read the installed classes (no version numbers).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

from transformers.modeling_outputs import BaseModelOutputWithPast


@functools.cache
def cache_keyword(module_type: type) -> str:
    """The keyword ``module_type.forward`` takes the KV cache by: ``cache`` or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(module_type.forward).parameters else "past_key_values"


@functools.cache
def cache_field(output_type: type) -> str:
    """The field of a transformers output dataclass that holds the KV cache: ``cache`` or ``past_key_values``."""
    return "cache" if "cache" in {f.name for f in dataclasses.fields(output_type)} else "past_key_values"


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for calling ``module`` (a transformers model or decoder layer)."""
    return {cache_keyword(type(module)): cache}


def cache_fields(output_type: type, cache: Any) -> dict[str, Any]:
    """``{field: cache}`` for building an ``output_type`` (a transformers output dataclass) that holds ``cache``."""
    return {cache_field(output_type): cache}


def decoder_output(last_hidden_state: Any, cache: Any) -> BaseModelOutputWithPast:
    """A decoder stack's output: hidden states [B, T, H] and the KV cache (or None)."""
    return BaseModelOutputWithPast(last_hidden_state=last_hidden_state, **cache_fields(BaseModelOutputWithPast, cache))


def output_cache(output: Any) -> Any:
    """The KV cache an output of a transformers model holds (None when it kept none)."""
    return getattr(output, cache_field(type(output)))
