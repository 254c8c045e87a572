"""Device -> host reads per LLaVA training forward do not grow with the batch size.

On a GPU every read of a device value on the host (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, ``nonzero``,
boolean-mask indexing, ``.cpu()``) waits for the queued kernels, and so does a blocking upload of host data
(``torch.tensor(..., device=...)``; an upload with ``non_blocking=True`` does not). A counting
``TorchFunctionMode`` (in this test only) counts those calls on CPU, where ``torch.cuda.set_sync_debug_mode`` does
not exist. The count must be the same for a batch of 2 and of 8, packed and padded, with and without PyramidDrop
(one stage and three)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode

from llava.constants import IGNORE_INDEX
from llava.model import PDropConfig
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.nonzero,
    torch.nonzero,
    torch.Tensor.cpu,
    torch.Tensor.masked_select,
    torch.masked_select,
    torch.Tensor.equal,
    torch.equal,
    torch.unique,
    torch.Tensor.unique,
}


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _is_tensor(args) -> bool:
    return bool(args) and isinstance(args[0], torch.Tensor)


class HostReads(TorchFunctionMode):
    """Counts calls that read device values back to the host, by name."""

    def __init__(self):
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS:
            self.calls[getattr(func, "__name__", str(func))] += 1
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and _bool_index(args[1]):
            self.calls[f"bool {func.__name__}"] += 1
        elif func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None and not _is_tensor(args):
            self.calls["blocking upload"] += 1  # host data copied to a device without non_blocking: waits
        elif func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and "output_size" not in kwargs:
            if len(args) > 1 and isinstance(args[1], torch.Tensor):
                self.calls["repeat_interleave"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def _batch(tiny, b: int) -> dict:
    rows = [tiny.prompt(9 + 3 * (i % 4), image_at=[1 + i % 3], seed=i) for i in range(b)]
    ids, mask = tiny.right_pad(rows)
    labels = ids.masked_fill(~mask, IGNORE_INDEX)
    labels[:, :5] = IGNORE_INDEX  # the answer starts after the image
    return dict(input_ids=ids, attention_mask=mask, labels=labels, images=tiny.images(b, "drip"))


def reads_per_forward(tiny, b: int, pdrop: PDropConfig | None, packed: bool = True) -> HostReads:
    config = tiny.config("drip", drip=dict(threshold=0.25))
    config.num_hidden_layers = 4  # room for a three-stage PyramidDrop schedule
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM(config).train()
    model.set_pdrop(pdrop)
    model.set_packing(packed)
    batch = _batch(tiny, b)
    model(**batch)  # warm-up: lazy initialisation reads nothing twice
    with HostReads() as reads:
        model(**batch)
    return reads


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize(
    "pdrop", [None, PDropConfig((1,), (0.5,)), PDropConfig((1, 2, 3), (0.5, 0.25, 0.125))], ids=["off", "1", "3"]
)
def test_host_reads_do_not_grow_with_the_batch(tiny, pdrop, packed):
    small, large = reads_per_forward(tiny, 2, pdrop, packed), reads_per_forward(tiny, 8, pdrop, packed)
    print(f"host reads per forward: B=2 {small.total} {dict(small.calls)}; B=8 {large.total} {dict(large.calls)}")
    assert large.total == small.total, (dict(small.calls), dict(large.calls))
