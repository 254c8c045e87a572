"""``[project.scripts]`` in pyproject.toml: every console command names a module and a callable that exist.

Read from the pyproject itself (no install): each target ``module:attr`` is imported with importlib and must give a
callable (the modules import their optional packages, e.g. gradio for ``llava-drip-web``, only when run).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; 3.10 skips this file
ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
EXPECTED = {
    "llava-drip-train",
    "llava-drip-answer-sqa",
    "llava-drip-answer-vqa",
    "llava-drip-score-sqa",
    "llava-drip-chat",
    "llava-drip-web",
    "drip-train",
}


def test_the_main_commands_are_declared() -> None:
    assert EXPECTED <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_target_resolves_to_a_callable(name: str) -> None:
    module, _, attr = SCRIPTS[name].partition(":")
    assert attr, f"{name}: target {SCRIPTS[name]!r} needs the form module:function"
    target = getattr(importlib.import_module(module), attr)
    assert callable(target), f"{name}: {SCRIPTS[name]} is not callable"
