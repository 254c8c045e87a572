"""One flash-attn import check serves DRIP's packed attention and the LLM's ``flash_attention_2`` choice: a broken
install is imported once and warned about once per process, whichever asks first."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from drip.flash import flash_attn_kernels
from drip.layers import packed_attention_kernel
from llava.model.builder import flash_attention_2_usable, resolve_attn_implementation


@pytest.mark.parametrize("imports", [False, True])
def test_drip_and_the_llm_share_one_import_attempt(tmp_path, monkeypatch, caplog, imports):
    attempts = tmp_path / "attempts"
    body = f"open({str(attempts)!r}, 'a').write('x')\n"  # counts the executions of flash_attn/__init__.py
    body += (
        "flash_attn_func = flash_attn_varlen_func = lambda *args: None\n"
        if imports
        else "raise ImportError('undefined symbol')\n"
    )
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda: True)  # a CUDA machine
    flash_attn_kernels.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                kernel = packed_attention_kernel("cuda", torch.bfloat16)
                usable = flash_attention_2_usable()
                attn = resolve_attn_implementation("flash_attention_2")
        assert attempts.read_text() == "x"  # a failed import leaves no module behind: only the cache stops a retry
        assert (kernel == "flash_attn") == usable == (attn == "flash_attention_2") == imports
        assert sum("does not import" in r.getMessage() for r in caplog.records) == (0 if imports else 1)
    finally:
        sys.modules.pop("flash_attn", None)
        flash_attn_kernels.cache_clear()
