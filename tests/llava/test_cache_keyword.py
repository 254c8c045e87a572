"""The KV cache's name on both sides of transformers 5.24's rename (``past_key_values`` -> ``cache``), read from the
classes; scripts/test_oldest_transformers.sh runs the model tests under the older transformers itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import LlamaModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from llava.model.cache_keyword import cache_fields, cache_keyword, cache_kwargs, decoder_output, output_cache


class _Before:  # transformers < 5.24
    def forward(self, hidden: Any, past_key_values: Any = None, use_cache: bool = False) -> None: ...


class _After:  # transformers >= 5.24
    def forward(self, hidden: Any, cache: Any = None, use_cache: bool = False) -> None: ...


@dataclass
class _OutputBefore:
    last_hidden_state: Any = None
    past_key_values: Any = None


@dataclass
class _OutputAfter:
    last_hidden_state: Any = None
    cache: Any = None


def test_the_cache_is_named_as_each_class_names_it():
    cache = object()
    assert cache_kwargs(_Before(), cache) == {"past_key_values": cache}
    assert cache_kwargs(_After(), cache) == {"cache": cache}
    assert output_cache(_OutputBefore(**cache_fields(_OutputBefore, cache))) is cache
    assert output_cache(_OutputAfter(**cache_fields(_OutputAfter, cache))) is cache


def test_the_installed_transformers_agrees_with_itself():
    cache = object()
    keyword = cache_keyword(LlamaModel)
    out = decoder_output(None, cache)
    assert isinstance(out, BaseModelOutputWithPast) and output_cache(out) is cache
    assert getattr(out, keyword) is cache  # the keyword the model takes is the field its output has
