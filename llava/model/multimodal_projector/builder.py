"""The projector that maps vision-tower features [N, D] to LLM embeddings [N, H] (LLaVA's ``mm_projector``).

Types and module layout are LLaVA-1.5's (Liu et al., 2023), so checkpoint keys match: ``linear`` is one
``nn.Linear`` (keys ``mm_projector.weight``); ``mlp{N}x_gelu`` is an ``nn.Sequential`` of N linears with GELU
between them (``mm_projector.0``, ``.2``, ...; LLaVA-1.5 uses ``mlp2x_gelu``); ``identity`` passes features through.
"""

from __future__ import annotations

import re

from torch import nn

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


def build_vision_projector(projector_type: str, mm_hidden_size: int, hidden_size: int) -> nn.Module:
    """Build a projector from D = ``mm_hidden_size`` (tower) to H = ``hidden_size`` (LLM).

    Raises:
        ValueError: unknown ``projector_type`` (names the accepted forms), or ``identity`` with D != H.
    """
    if projector_type == "linear":
        return nn.Linear(mm_hidden_size, hidden_size)
    if projector_type == "identity":
        if mm_hidden_size != hidden_size:
            raise ValueError(
                f"mm_projector_type 'identity' needs mm_hidden_size == hidden_size, "
                f"got {mm_hidden_size} vs {hidden_size}"
            )
        return nn.Identity()
    match = _MLP_GELU.match(projector_type)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"unknown mm_projector_type {projector_type!r}; expected 'linear', 'identity' or 'mlp<N>x_gelu'"
        )
    layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]  # indices 1, 2 / 3, 4 ...: LLaVA's key names
    return nn.Sequential(*layers)


def check_projector_weights(
    weights: dict, projector: nn.Module, source: str, tower_name: str | None, tower_width: int
) -> None:
    """ValueError naming ``source`` and both widths when ``weights`` (projector keys: ``0.weight``...) do not fit
    ``projector``: a projector trained on another tower's features (another width D) or for another LLM (H), instead
    of torch's size-mismatch error. Keys are left to ``load_state_dict``; only shapes are compared here."""
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    wrong = {k: tuple(v.shape) for k, v in weights.items() if k in expected and tuple(v.shape) != expected[k]}
    if not wrong:
        return
    first = "weight" if "weight" in expected else "0.weight"  # linear, or the first linear of mlpNx_gelu
    trained = tuple(weights[first].shape) if first in weights else None
    if trained is not None and len(trained) == 2 and trained[1] != tower_width:
        raise ValueError(
            f"{source}: the projector was trained on tower features of width {trained[1]}, but the "
            f"vision tower {tower_name!r} gives features of width {tower_width}; use the tower it was "
            "trained with, or train a projector for this one"
        )
    shapes = "; ".join(f"{k}: {got} here, expected {expected[k]}" for k, got in sorted(wrong.items()))
    raise ValueError(
        f"{source}: the projector weights do not fit this model ({shapes}); the LLM's hidden size or "
        "the projector type differs from the one it was trained for"
    )
