"""What GPU runs depend on, checked on CPU (issue 13, items 4-6): the flash-attn gate reads the compute dtype,
a broken flash-attn falls back once, fp16 pooling of large segments stays finite, one host sync per pooling
stage, and torch.compile(tower) matches eager."""

import logging
import sys
import types

import pytest
import torch

from drip import DripVisionTransformer, get_preset
from drip.layers import compute_dtype, flash_varlen, use_flash
from drip.pooling import pool_segments


def test_flash_gate_reads_the_autocast_dtype_not_the_layernorm_output():
    x = torch.randn(4, 8)  # fp32, as CUDA AMP keeps LayerNorm outputs
    assert compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(x) == torch.bfloat16
    assert compute_dtype(x.half()) == torch.float16
    assert not use_flash("cpu", torch.bfloat16)  # CPU never takes the CUDA kernel


def test_use_flash_needs_cuda_and_half_precision(monkeypatch):
    monkeypatch.setattr("drip.layers._flash_installed", lambda: True)
    assert use_flash("cuda", torch.bfloat16) and use_flash("cuda", torch.float16)
    assert not use_flash("cuda", torch.float32) and not use_flash("cpu", torch.float16)


def test_broken_flash_attn_falls_back_with_one_warning(monkeypatch, caplog):
    broken = types.ModuleType("flash_attn")  # imports, but lacks the kernel (a wheel built for another torch)
    monkeypatch.setitem(sys.modules, "flash_attn", broken)
    flash_varlen.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="drip.layers"):
            assert flash_varlen() is None and flash_varlen() is None
        assert sum("does not import" in r.message for r in caplog.records) == 1
    finally:
        flash_varlen.cache_clear()


def test_fp16_pooling_of_large_segments_is_finite():
    x = torch.full((2, 576, 8), 150.0, dtype=torch.float16)  # 576 * 150 overflows fp16 (max 65504)
    b = torch.zeros(2, 576)
    b[1, 287] = 1  # image 0: one segment of 576 patches; image 1: two of 288
    pooled = pool_segments(x, b)
    assert pooled.tokens.dtype == torch.float16 and torch.isfinite(pooled.tokens).all()
    assert pooled.counts.tolist() == [1, 2] and pooled.counts_host == [1, 2]
    torch.testing.assert_close(pooled.tokens[pooled.mask].float(), torch.full((3, 8), 150.0))


class _SyncCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts ops whose result the host must wait for (scalar reads, data-dependent shapes)."""

    SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "repeat_interleave", "unique")

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if name in self.SYNC_OPS and not (name == "repeat_interleave" and "output_size" in (kwargs or {})):
            self.ops.append(name)
        return out


@pytest.mark.parametrize("name", ["DRIP-tiny", "H-DRIP-tiny"])
@pytest.mark.parametrize("hidden", [False, True])
def test_no_data_dependent_host_reads_in_the_blocks(name, hidden):
    """The one read per pooling stage is ``counts.tolist()`` (not an op); nothing else waits on the device."""
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset(name)).eval()
    with torch.no_grad():
        for p in tower.predictors:  # varied counts per image, so packing takes its general (padded-SDPA) path
            p.fc2.weight.normal_(std=1.0)
        counter = _SyncCounter()
        with counter:
            out = tower(torch.randn(4, 3, 64, 64), output_hidden_states=hidden)
    assert len(set(out.token_counts.tolist())) > 2
    assert counter.ops == [], counter.ops


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset("DRIP-tiny")).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        for p in tower.predictors:
            p.fc2.weight.normal_(std=1.0)
        eager = tower(x)
        compiled = torch.compile(tower)(x)
    assert compiled.token_counts.equal(eager.token_counts)
    torch.testing.assert_close(compiled.image_embeds, eager.image_embeds, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.tokens, eager.tokens, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # ~30 s; CI checks compile == eager through tests/drip/test_gpu_check.py (aot_eager)
def test_torch_compile_matches_eager_aot_eager_backend():
    """dynamo tracing + AOT autograd, without the C++ compile of inductor."""
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset("DRIP-tiny")).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        for p in tower.predictors:
            p.fc2.weight.normal_(std=1.0)
        eager = tower(x)
        compiled = torch.compile(tower, backend="aot_eager")(x)
    assert compiled.token_counts.equal(eager.token_counts)
    torch.testing.assert_close(compiled.image_embeds, eager.image_embeds, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_non_finite_pixels_are_rejected_with_a_clear_message(train):
    """Issue 15, item 6: NaN pixels (or an fp16 overflow) gave an obscure arange error or silently one token."""
    tower = DripVisionTransformer(get_preset("DRIP-tiny")).train(train)
    x = torch.randn(3, 3, 64, 64)
    x[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\].*non-finite pixels"):
        tower(x)
    tower(torch.randn(3, 3, 64, 64))  # finite images still run
