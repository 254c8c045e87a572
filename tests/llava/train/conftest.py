"""Shared by the training-run tests: a small demo world, a tiny base LLM saved like any HF checkpoint, and the
command line of a tiny stage-2 run (DRIP-tiny tower, 4 samples a step)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llava_drip_demo.demo_world import generate
from tests.llava.tiny_runs import SMALL_WORLD, tiny_run_argv


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate(out, SMALL_WORLD)
    return out


@pytest.fixture(scope="package")
def base_llm(world: Path, tmp_path_factory: pytest.TempPathFactory, save_tiny_base_llm) -> Path:
    return save_tiny_base_llm(world, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="package")
def run_args(world: Path, base_llm: Path) -> Callable[..., list[str]]:
    """(output dir, *extra flags) -> the argv of a tiny stage-2 run that saves a checkpoint every 3 steps."""

    def args(out: Path, *extra: str, data: Path | None = None) -> list[str]:
        save = ("--save_strategy", "steps", "--save_steps", "3", "--save_total_limit", "1")
        return tiny_run_argv(base_llm, world, out, *save, *extra, data=data)

    return args
