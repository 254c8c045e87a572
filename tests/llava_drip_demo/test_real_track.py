"""llava_drip_demo.real_track without data: the run plan, each run's stage-1 flags, and the table's spread over seeds
(the track itself runs in tests/test_real_demo.py)."""

import json
import re
import shlex
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


def test_training_records_are_the_ones_before_the_evaluated_last_ones(tmp_path):
    records = [{"id": str(i), "image": f"{i}.jpg", "conversations": []} for i in range(12)]
    (tmp_path / real_track.DATA_FILE).write_text(json.dumps(records))
    track = real_track.Track(tmp_path, Path("llm"), Path("tower"), tmp_path, eval_last=5)
    assert [r["id"] for r in json.loads(real_track.write_training_records(track).read_text())] == list("0123456")
    ranked = real_track.rank_argv(track, "full", "full-seed0")
    assert dict(zip(ranked[::2], ranked[1::2], strict=True))["--eval-last"] == "5"
    first3 = real_track.Track(tmp_path, Path("llm"), Path("tower"), tmp_path, train_images=3, eval_last=5)
    assert len(json.loads(real_track.write_training_records(first3).read_text())) == 3
    with pytest.raises(ValueError, match="no training records before the last 12"):
        real_track.write_training_records(real_track.Track(tmp_path, Path("l"), Path("t"), tmp_path, eval_last=12))


def write_run(runs: Path, run: str, accuracy: float, loss: float) -> None:
    (runs / run).mkdir(parents=True)
    score = dict(accuracy=accuracy, accuracy_per_token=accuracy / 2, true_loss_per_token=loss, chance=0.2)
    score.update(visual_tokens_mean=64.0, tower_gmacs_mean=5.5, prefill_gmacs_mean=7.0, images=200, k=4)
    score.update(image_accuracy=accuracy + 0.1, image_chance=0.25, image_captions=150, image_auc=accuracy + 0.2)
    score.update(image_auc_se=0.025)
    (runs / run / "score.json").write_text(json.dumps(score))
    (runs / run / "seconds.json").write_text(json.dumps({"train_seconds": 100, "rank_seconds": 40}))


def test_the_table_gives_each_method_its_mean_and_spread_over_seeds(tmp_path):
    write_run(tmp_path, "uniform-seed0", 0.30, 3.0)
    write_run(tmp_path, "uniform-seed1", 0.40, 3.2)
    write_run(tmp_path, "full-seed0", 0.5, 2.5)
    (tmp_path / "drip-seed0").mkdir()  # still running: no score yet
    rows = real_track.results_table(tmp_path).splitlines()
    assert rows[2] == (
        "| full | 1 | 64.0 | 12.50 | 0.500 (0.20) | 0.250 | 0.600 (0.25) | 0.700 ± 0.025 | 2.500 | 100 | 40 |"
    )
    assert rows[3] == (
        "| uniform | 2 | 64.0 | 12.50 | 0.350 [0.300, 0.400] (0.20) | 0.175 [0.150, 0.200] | "
        "0.450 [0.400, 0.500] (0.25) | 0.550 [0.500, 0.600] | 3.100 [3.000, 3.200] | 100 | 40 |"
    )
    assert len(rows) == 4


# The track calls llava.train.train in-process, so it restates scripts/v1_5's stage-1 flags: these tests hold the two
# to one recipe. The track sets its own batch, rate, epochs and these (it never evaluates, saves once, runs on CPU):
TRACK_OWN = {"--per_device_eval_batch_size", "--save_steps", "--model_max_length", "--dataloader_num_workers"}
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "v1_5"


def literal_flags(words: list[str]) -> dict[str, str]:
    """--flag value pairs of shell words whose value is a literal (not "$VAR"), in order."""
    pairs = zip(words, [*words[1:], ""], strict=True)
    return {f: v for f, v in pairs if f.startswith("--") and v and not v.startswith(("--", "$"))}


def script_stage1_flags(common: str, pretrain: str) -> dict[str, str]:
    """The literal flags drip_pretrain.sh passes: common.sh's MM_ARGS and TRAINER_ARGS and its own launch line's."""
    arrays = [re.search(rf"^{name}=\((.*?)\)", common, re.S | re.M) for name in ("MM_ARGS", "TRAINER_ARGS")]
    launch = pretrain.split('"${LAUNCH[@]}"', 1)[1].replace("\\\n", " ")
    words = [w for m in arrays for w in shlex.split(m.group(1))] + shlex.split(launch, comments=True)
    return literal_flags(words)


def recipe_mismatches(common: str, pretrain: str) -> list[str]:
    script = script_stage1_flags(common, pretrain)
    track = literal_flags(list(real_track.STAGE1))
    differ = [f for f in (set(script) | set(track)) - TRACK_OWN if script.get(f) != track.get(f)]
    return sorted(f"{f}: scripts {script.get(f)} / track {track.get(f)}" for f in differ)


def test_the_track_passes_the_stage1_scripts_flags():
    common, pretrain = (SCRIPTS / "common.sh").read_text(), (SCRIPTS / "drip_pretrain.sh").read_text()
    assert script_stage1_flags(common, pretrain)["--tune_mm_mlp_adapter"] == "True"
    assert recipe_mismatches(common, pretrain) == []


def test_a_flag_changed_on_one_side_only_is_named():
    common, pretrain = (SCRIPTS / "common.sh").read_text(), (SCRIPTS / "drip_pretrain.sh").read_text()
    planted = common.replace("--warmup_ratio 0.03", "--warmup_ratio 0.05")
    assert recipe_mismatches(planted, pretrain) == ["--warmup_ratio: scripts 0.05 / track 0.03"]
    planted = pretrain.replace("--version plain", "--version v1")
    assert recipe_mismatches(common, planted) == ["--version: scripts v1 / track plain"]
