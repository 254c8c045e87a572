"""Shared by the training-run tests: a small demo world, a tiny base LLM saved like any HF checkpoint, and the
command line of a tiny stage-2 run (DRIP-tiny tower, 4 samples a step)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from llava_drip_demo.demo_world import WorldConfig, generate

SMALL_WORLD = WorldConfig(n_pretrain=24, n_instruct=24, n_sqa=4, n_bench=3, n_clip=4, n_zeroshot_per_class=1)


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
        return [
            "--model_name_or_path",
            str(base_llm),
            "--version",
            "v1",
            "--data_path",
            str(data or world / "instruct.json"),
            "--image_folder",
            str(world / "images"),
            "--vision_tower",
            "drip:DRIP-tiny",
            "--mm_projector_type",
            "mlp2x_gelu",
            "--output_dir",
            str(out),
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "1e-3",
            "--model_max_length",
            "256",
            "--logging_steps",
            "1",
            "--report_to",
            "none",
            "--seed",
            "0",
            "--dataloader_num_workers",
            "0",
            "--image_aspect_ratio",
            "pad",
            "--save_strategy",
            "steps",
            "--save_steps",
            "3",
            "--save_total_limit",
            "1",
            *extra,
        ]

    return args
