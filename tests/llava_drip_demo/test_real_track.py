"""llava_drip_demo.real_track without data: the run plan, each run's stage-1 flags, and the table's spread over seeds
(the track itself runs in tests/test_real_demo.py)."""

import json
from pathlib import Path

import pytest

from llava_drip_demo import real_track


def test_runs_follow_the_given_order_and_bad_runs_are_named():
    assert real_track.planned_runs("full drip", "0 1", None) == [("full", 0), ("drip", 0), ("full", 1), ("drip", 1)]
    assert real_track.planned_runs("ignored", "9", "uniform:1 full:0") == [("uniform", 1), ("full", 0)]
    with pytest.raises(ValueError, match="unknown method pyramid"):
        real_track.planned_runs("full pyramid", "0", None)
    with pytest.raises(ValueError, match="run full:x: the seed must be a non-negative integer"):
        real_track.planned_runs("", "", "full:x")


def test_stage1_flags_carry_the_methods_reduction_connector_and_budget(tmp_path):
    track = real_track.Track(tmp_path, Path("llm"), Path("tower"), tmp_path, train_images=16, batch_size=4)
    argv = real_track.stage1_argv(track, "drip-local", 1, tmp_path / "train.json", "drip-local-seed1")
    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    assert flags["--mm_connector"] == "drip:rate=0.25,estimator=local" and flags["--token_reduction"] == "none"
    assert flags["--seed"] == "1" and flags["--per_device_train_batch_size"] == "4"
    assert flags["--version"] == "plain" and flags["--tune_mm_mlp_adapter"] == "True"
    assert flags["--num_train_epochs"] == "1.0" and "--max_steps" not in flags
    assert flags["--output_dir"].endswith("checkpoints/real/llava-drip-local-seed1")
    assert "--mm_connector" not in real_track.stage1_argv(track, "visionzip", 0, tmp_path / "t.json", "v")


def write_run(runs: Path, run: str, accuracy: float, loss: float) -> None:
    (runs / run).mkdir(parents=True)
    score = dict(accuracy=accuracy, accuracy_per_token=accuracy / 2, true_loss_per_token=loss, chance=0.2)
    score.update(visual_tokens_mean=64.0, tower_gmacs_mean=5.5, prefill_gmacs_mean=7.0, images=200, k=4)
    score.update(image_accuracy=accuracy + 0.1, image_chance=0.25, image_captions=150)
    (runs / run / "score.json").write_text(json.dumps(score))
    (runs / run / "seconds.json").write_text(json.dumps({"train_seconds": 100, "rank_seconds": 40}))


def test_the_table_gives_each_method_its_mean_and_spread_over_seeds(tmp_path):
    write_run(tmp_path, "uniform-seed0", 0.30, 3.0)
    write_run(tmp_path, "uniform-seed1", 0.40, 3.2)
    write_run(tmp_path, "full-seed0", 0.5, 2.5)
    (tmp_path / "drip-seed0").mkdir()  # still running: no score yet
    rows = real_track.results_table(tmp_path).splitlines()
    assert rows[2] == "| full | 1 | 64.0 | 12.50 | 0.500 (0.20) | 0.250 | 0.600 (0.25) | 2.500 | 100 | 40 |"
    assert rows[3] == (
        "| uniform | 2 | 64.0 | 12.50 | 0.350 [0.300, 0.400] (0.20) | 0.175 [0.150, 0.200] | "
        "0.450 [0.400, 0.500] (0.25) | 3.100 [3.000, 3.200] | 100 | 40 |"
    )
    assert len(rows) == 4
