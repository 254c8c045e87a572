"""Token statistics of DRIP towers inside any model: visual tokens per image and first-stage boundary rate.

``DripTokenStats`` hooks every ``DripVisionTransformer`` of a model (an open_clip CLIP, a classifier, LLaVA's tower)
and accumulates what the tools report; shared by ``drip.tools.zero_shot`` and ``drip.tools.classify``.
"""

from __future__ import annotations

from torch import nn

from drip.model import DripOutput, DripVisionTransformer


def find_drip_towers(model: nn.Module) -> list[DripVisionTransformer]:
    """Every DripVisionTransformer inside ``model`` (normally one: the image tower or what an adapter wraps)."""
    return [m for m in model.modules() if isinstance(m, DripVisionTransformer)]


class DripTokenStats:
    """Context manager: hooks the DRIP tower(s) of a model and accumulates token counts and boundary rates.

    ``last`` keeps the most recent ``DripOutput`` (its ``boundary_loss`` still has its graph, for training).
    """

    def __init__(self, model: nn.Module):
        self.towers = find_drip_towers(model)
        self.images, self.tokens, self.boundaries, self.positions = 0, 0, 0.0, 0
        self.last: DripOutput | None = None
        self._handles: list = []

    @property
    def is_drip(self) -> bool:
        return bool(self.towers)

    def __enter__(self) -> DripTokenStats:
        self._handles = [t.register_forward_hook(self._record) for t in self.towers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _record(self, module: nn.Module, args: tuple, output: DripOutput) -> None:
        self.last = output
        b = output.boundaries.detach()  # [B, N] first-stage boundaries (the last patch is always one)
        self.images += output.token_counts.numel()
        self.tokens += int(output.token_counts.sum())
        self.boundaries += float(b.sum())
        self.positions += b.numel()

    def summary(self) -> dict[str, float | None]:
        """Mean visual tokens per image (after the last pooling stage), first-stage boundary rate; None without DRIP."""
        if not self.images:
            return {"tokens_per_image": None, "boundary_rate": None}
        return {"tokens_per_image": self.tokens / self.images, "boundary_rate": self.boundaries / self.positions}
