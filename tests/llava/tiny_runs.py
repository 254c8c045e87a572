"""The tiny training runs the tests start, in one place: the demo world's size and the base command line of a stage-2
run (LLM + projector trained, DRIP-tiny tower frozen, a tiny base LLM). Used by tests/llava/test_train.py,
tests/llava/train/ and tests/llava/test_multiprocess.py (whose launched ranks import it too)."""

from __future__ import annotations

from pathlib import Path

from llava_drip_demo.demo_world import WorldConfig

SMALL_WORLD = WorldConfig(n_pretrain=24, n_instruct=24, n_sqa=4, n_bench=3, n_clip=4, n_zeroshot_per_class=1)
LORA = ("--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8")  # a tiny LoRA on the LLM


def tiny_run_argv(
    base_llm: Path, world: Path, out: Path, *extra: str, data: Path | None = None, batch: int = 4
) -> list[str]:
    """The flags every tiny run shares, then ``extra`` (a repeated flag: its last value counts). ``data`` defaults
    to the world's ``instruct.json``; ``batch`` is the per-device batch size."""
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
        str(batch),
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
        *extra,
    ]


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    """A copy of ``args`` with ``flag``'s value replaced (the flag must be there)."""
    out = list(args)
    out[out.index(flag) + 1] = value
    return out
