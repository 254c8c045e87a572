"""What GPU runs depend on, checked on CPU: the flash-attn gate reads the compute dtype,
a broken flash-attn falls back once, fp16 pooling of large segments stays finite, one host sync per pooling
stage, and torch.compile(tower) matches eager."""

import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.varlen import varlen_attn

from drip import DripVisionTransformer, get_preset
from drip.flash import flash_attn_kernels
from drip.layers import (
    Attention,
    PackedLayout,
    compute_dtype,
    flash_varlen,
    packed_attention_kernel,
    torch_varlen,
    use_flash,
)
from drip.pooling import pool_segments


def test_flash_gate_reads_the_autocast_dtype_not_the_layernorm_output():
    x = torch.randn(4, 8)  # fp32, as CUDA AMP keeps LayerNorm outputs
    assert compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(x) == torch.bfloat16
    assert compute_dtype(x.half()) == torch.float16
    assert not use_flash("cpu", torch.bfloat16)  # CPU never takes the CUDA kernel


def test_use_flash_needs_cuda_and_half_precision(monkeypatch):
    monkeypatch.setattr("drip.layers.flash_varlen", lambda: lambda *args: None)
    assert use_flash("cuda", torch.bfloat16) and use_flash("cuda", torch.float16)
    assert not use_flash("cuda", torch.float32) and not use_flash("cpu", torch.float16)


@pytest.fixture
def broken_flash_attn(tmp_path, monkeypatch):
    """A ``flash_attn`` package on sys.path that is found but fails to import (built for another torch)."""
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('flash_attn_2_cuda: undefined symbol _ZN3c10')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    flash_attn_kernels.cache_clear()
    yield
    sys.modules.pop("flash_attn", None)
    flash_attn_kernels.cache_clear()


def test_a_flash_attn_that_fails_to_import_is_not_used(broken_flash_attn, monkeypatch):
    assert not use_flash("cuda", torch.bfloat16)
    assert packed_attention_kernel("cuda", torch.bfloat16) == "varlen_attn"  # torch's kernel instead
    monkeypatch.setattr("drip.layers.torch_varlen", lambda: None)  # torch < 2.10
    assert packed_attention_kernel("cuda", torch.float16) == "sdpa"


def test_packed_kernel_dispatch(monkeypatch):
    flash = lambda *args: None
    monkeypatch.setattr("drip.layers.flash_varlen", lambda: flash)
    for dtype in (torch.float16, torch.bfloat16):
        assert packed_attention_kernel("cuda", dtype) == "flash_attn"
        assert packed_attention_kernel("cpu", dtype) == "sdpa"  # neither varlen kernel runs on CPU
    assert packed_attention_kernel("cuda", torch.float32) == "sdpa"  # both kernels take fp16 / bf16 only
    monkeypatch.setattr("drip.layers.flash_varlen", lambda: None)  # no flash-attn (the GPU machine)
    assert packed_attention_kernel("cuda", torch.bfloat16) == "varlen_attn"
    assert torch_varlen() is varlen_attn  # torch >= 2.10 has it
    assert packed_attention_kernel("cuda", torch.float32) == packed_attention_kernel("cpu", torch.bfloat16) == "sdpa"


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
    """What a varlen kernel computes, per sequence with SDPA: [T, H, hd] -> [T, H, hd] (the CPU stand-in)."""
    assert cu_q.dtype == torch.int32 and isinstance(max_q, int) and isinstance(max_k, int)
    assert cu_q is cu_k and max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
    outs = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        seq = [t[start:end].transpose(0, 1) for t in (q, k, v)]  # [H, l, hd]
        outs.append(F.scaled_dot_product_attention(*seq).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_attention_through_the_varlen_path_equals_sdpa(monkeypatch, dtype):
    """The varlen call (arguments, layout, output reshape) gives the SDPA path's result for a stand-in kernel."""
    torch.manual_seed(0)
    attn = Attention(32, 4).to(dtype)
    lengths = [5, 3, 7, 3, 1]
    layout = PackedLayout.from_lengths(lengths, 7, torch.device("cpu"))
    x = torch.randn(sum(lengths), 32, dtype=dtype)
    with torch.no_grad():
        expected = attn.forward_packed(x, layout)  # SDPA on CPU
        monkeypatch.setattr("drip.layers.packed_attention_kernel", lambda device, dt: "varlen_attn")
        monkeypatch.setattr("drip.layers.torch_varlen", lambda: _reference_varlen)
        got = attn.forward_packed(x, layout)
    torch.testing.assert_close(got, expected, atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=1e-2)


def test_broken_flash_attn_falls_back_with_one_warning(monkeypatch, caplog):
    broken = types.ModuleType("flash_attn")  # imports, but lacks the kernel (a wheel built for another torch)
    monkeypatch.setitem(sys.modules, "flash_attn", broken)
    flash_attn_kernels.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="drip.flash"):
            assert flash_varlen() is None and flash_varlen() is None
        assert sum("does not import" in r.message for r in caplog.records) == 1
    finally:
        flash_attn_kernels.cache_clear()


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
    """Non-finite images: NaN pixels (or an fp16 overflow) gave an obscure arange error or silently one token."""
    tower = DripVisionTransformer(get_preset("DRIP-tiny")).train(train)
    x = torch.randn(3, 3, 64, 64)
    x[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\].*non-finite pixels"):
        tower(x)
    tower(torch.randn(3, 3, 64, 64))  # finite images still run
