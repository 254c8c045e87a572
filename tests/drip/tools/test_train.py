"""drip.tools.train: open_clip_train's own train_one_epoch driven with DRIP's loss, schedule and optimizer groups, and a
real ``python -m drip.tools.train`` run on a generated CSV data set (needs open_clip_train's data extras)."""

import importlib.util
import json
import os
import subprocess
import sys

import open_clip
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from drip.checkpoint import load_drip
from drip.open_clip_integration import DripLoss, drip_tower, register_open_clip
from drip.tools.train import DripSchedule, epoch_metrics, make_optimizer, parse_drip_args

HAS_DATA_EXTRAS = all(importlib.util.find_spec(m) for m in ("pandas", "webdataset", "braceexpand"))
needs_extras = pytest.mark.skipif(
    not HAS_DATA_EXTRAS, reason="open_clip_train.data needs pandas, webdataset, braceexpand (open_clip_torch[training])"
)


class _Data:
    """The two things train_one_epoch uses of open_clip_train's DataInfo."""

    def __init__(self, loader: DataLoader):
        self.dataloader = loader

    def set_epoch(self, epoch: int) -> None:
        pass


def _open_clip_args(epochs: int, freeze: int):
    from open_clip_train.distributed import init_distributed_device
    from open_clip_train.params import parse_args

    _, rest = parse_drip_args(["--model", "DRIP-tiny", "--batch-size", "8", "--lr", "1e-3", "--warmup", "1"])
    args = parse_args(rest + ["--epochs", str(epochs), "--device", "cpu", "--log-every-n-steps", "100"])
    init_distributed_device(args)
    args.distill, args.wandb, args.freeze_except_predictor_epochs = False, False, freeze
    return args


COLORS = {"black": (0, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0), "cyan": (0, 255, 255)}
COLORS.update({"red": (255, 0, 0), "magenta": (255, 0, 255), "yellow": (255, 255, 0), "white": (255, 255, 255)})


def _pairs(n: int = 16):
    """Eight noisy solid-colour image classes with one caption each: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    names = list(COLORS)
    rgb = torch.tensor([COLORS[names[i % 8]] for i in range(n)], dtype=torch.float32) / 127.5 - 1  # [n, 3]
    images = rgb[:, :, None, None] + 0.3 * torch.randn(n, 3, 64, 64, generator=g)
    texts = open_clip.get_tokenizer("DRIP-tiny")([f"a photo of {names[i % 8]}" for i in range(n)])
    loader = DataLoader(TensorDataset(images, texts), batch_size=8, shuffle=True, drop_last=True)
    loader.num_batches, loader.num_samples = len(loader), n
    return {"train": _Data(loader)}


def test_parse_drip_args_splits_flags_and_adds_vit_adam_defaults():
    ours, rest = parse_drip_args(["--model", "DRIP-tiny", "--drip-boundary-loss-weight", "0.3", "--eps", "1e-8"])
    assert ours.drip_boundary_loss_weight == 0.3 and ours.freeze_except_predictor_epochs == 0
    assert rest == ["--model", "DRIP-tiny", "--eps", "1e-8", "--beta1", "0.9", "--beta2", "0.98"]


def test_train_one_epoch_with_drip_loss_schedule_and_predictor_warmup():
    from open_clip_train.scheduler import const_lr
    from open_clip_train.train import train_one_epoch

    torch.set_num_threads(1)
    register_open_clip()
    torch.manual_seed(0)
    args, data = _open_clip_args(epochs=5, freeze=1), _pairs()
    model = open_clip.create_model("DRIP-tiny", output_dict=True)
    tower = drip_tower(model)
    optimizer = make_optimizer(model, args)
    steps = data["train"].dataloader.num_batches
    lr_fn = const_lr(optimizer, args.lr, 0, steps * args.epochs)
    schedule = DripSchedule(lr_fn, optimizer, tower, steps * args.epochs, 0.25, freeze_steps=steps)
    loss = DripLoss(open_clip.ClipLoss(), model, boundary_loss_weight=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = []
    for epoch in range(args.epochs):
        train_one_epoch(model, data, loss, epoch, optimizer, None, schedule, None, args)
        history.append(epoch_metrics(loss, args, torch.device("cpu"), 1.0, steps))
        if epoch == 0:  # predictor warm-up: only the boundary predictor moved
            moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
            assert moved and all(".predictors." in k for k in moved)
            assert sum(".predictors." in k for k in moved) == len(list(tower.predictors.parameters()))
    assert schedule.temperature == pytest.approx(0.25) and tower.temperature == pytest.approx(0.25)
    assert not torch.equal(model.state_dict()["text_projection"], before["text_projection"])
    first, last = history[1]["task_loss"], history[-1]["task_loss"]  # epoch 1 was frozen: compare from epoch 2
    assert last < first - 0.5, [h["task_loss"] for h in history]
    for h in history:
        assert 0 < h["boundary_rate"] <= 1 and 1 <= h["tokens_per_image"] <= 64 and h["boundary_loss"] >= 0
        assert h["cpu_max_rss_mb"] > 0


def _write_csv(tmp_path, n: int = 16) -> str:
    from PIL import Image

    rows = ["filepath\ttitle"]
    names = list(COLORS)
    for i in range(n):
        pixels = torch.tensor(COLORS[names[i % 8]]) + 40 * torch.randn(64, 64, 3)
        Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy()).save(tmp_path / f"{i}.png")
        rows.append(f"{tmp_path / f'{i}.png'}\ta photo of {names[i % 8]}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path / "train.csv")


def _run_drip_train(tmp_path, *extra: str, launcher=(sys.executable, "-m", "drip.tools.train")) -> None:
    csv = tmp_path / "train.csv" if (tmp_path / "train.csv").exists() else _write_csv(tmp_path)
    cmd = [*launcher, "--model", "DRIP-tiny", "--train-data", str(csv), "--csv-img-key", "filepath"]
    cmd += ["--csv-caption-key", "title", "--batch-size", "8", "--lr", "1e-3", "--warmup", "1", "--workers", "0"]
    cmd += ["--logs", str(tmp_path / "logs"), "--name", "run", "--seed", "0", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _metrics(tmp_path) -> list[dict]:
    lines = (tmp_path / "logs" / "run" / "drip_metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow  # ~15-40 s; CI runs the same entry point on a CSV through tests/test_demo.py (scripts/demo.sh)
@needs_extras
def test_drip_train_entry_point_on_a_csv(tmp_path):
    _run_drip_train(tmp_path, "--epochs", "3", "--drip-temperature-final", "0.5")
    metrics = _metrics(tmp_path)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["task_loss"] < metrics[0]["task_loss"] - 0.3, [m["task_loss"] for m in metrics]
    assert metrics[-1]["temperature"] == pytest.approx(0.5)
    assert all(0 < m["boundary_rate"] <= 1 and m["step_time_s"] > 0 for m in metrics)
    ckpt_dir = tmp_path / "logs" / "run" / "checkpoints"
    register_open_clip()
    reloaded = open_clip.create_model("DRIP-tiny", pretrained=str(ckpt_dir / "epoch_3.pt"))
    exported = load_drip(ckpt_dir / "drip_tower")
    for k, v in exported.state_dict().items():
        assert torch.equal(v, drip_tower(reloaded).state_dict()[k]), k


@pytest.mark.slow
@needs_extras
def test_drip_train_upcycles_freezes_resumes_and_runs_under_torchrun(tmp_path):
    from drip.weights import upcycle

    register_open_clip()
    vit = open_clip.create_model("ViT-tiny")
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    upcycle_args = ["--upcycle-from", str(tmp_path / "vit.pt"), "--freeze-except-predictor-epochs", "1"]
    _run_drip_train(tmp_path, "--epochs", "1", *upcycle_args)
    tower = load_drip(tmp_path / "logs" / "run" / "checkpoints" / "drip_tower")
    source = upcycle(vit, "DRIP-tiny").state_dict()
    for k, v in tower.state_dict().items():  # one frozen epoch: every ViT weight is still the source's
        assert k.startswith(("predictors.", "eval_thresholds")) or torch.equal(v, source[k]), k
    _run_drip_train(tmp_path, "--epochs", "2", "--resume", "latest")
    assert [m["epoch"] for m in _metrics(tmp_path)] == [1, 2]
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    # "--": torchrun's own parser would otherwise take --logs for an abbreviation of its --logs-specs
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "drip.tools.train", "--")
    _run_drip_train(ddp, "--epochs", "1", launcher=torchrun)
    assert len(_metrics(ddp)) == 1


def test_resume_latest_falls_back_from_a_truncated_checkpoint_with_a_warning(tmp_path, caplog):
    import argparse

    from drip.tools.train_checkpoints import latest_checkpoints, load_resume_checkpoint

    for epoch in (1, 2):
        torch.save({"epoch": epoch}, tmp_path / f"epoch_{epoch}.pt")
    data = (tmp_path / "epoch_2.pt").read_bytes()
    (tmp_path / "epoch_2.pt").write_bytes(data[: len(data) // 2])  # a save cut short by a kill
    args = argparse.Namespace(checkpoint_path=str(tmp_path), save_most_recent=False)
    found = latest_checkpoints(args)
    assert found == [str(tmp_path / "epoch_2.pt"), str(tmp_path / "epoch_1.pt")]
    args.resume, args.resume_fallbacks = found[0], found[1:]
    with caplog.at_level("WARNING"):
        assert load_resume_checkpoint(args) == {"epoch": 1}
    assert args.resume == str(tmp_path / "epoch_1.pt")
    assert "epoch_2.pt does not load" in caplog.text
    args.resume, args.resume_fallbacks = found[0], []  # nothing older: a clear error, no silent fresh start
    with pytest.raises(SystemExit, match="cannot resume"):
        load_resume_checkpoint(args)
    from pathlib import PurePosixPath  # any object beyond tensors and containers: loading it would run code

    torch.save({"epoch": 3, "x": PurePosixPath("payload")}, tmp_path / "epoch_3.pt")
    args.resume, args.resume_fallbacks = str(tmp_path / "epoch_3.pt"), [str(tmp_path / "epoch_1.pt")]
    with pytest.raises(SystemExit, match=r"cannot resume: .*epoch_3\.pt: refused for safety") as stop:
        load_resume_checkpoint(args)  # refused, not skipped for an older file
    assert "weights_only=False" not in str(stop.value)


def _losses(metrics: list[dict]) -> list[tuple]:
    keys = ("epoch", "task_loss", "boundary_loss", "boundary_rate", "tokens_per_image", "temperature")
    return [tuple(m[k] for k in keys) for m in metrics]


@pytest.mark.slow
@needs_extras
def test_resume_latest_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    """A run stopped after epoch 1's save (its checkpoints copied; epoch 2's cut short by the kill) and resumed with
    --resume latest gives the uninterrupted run's losses and weights exactly."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    args = ("--epochs", "3", "--drip-temperature-final", "0.5")
    _run_drip_train(full, *args)
    ckpts = cut / "logs" / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (cut / "train.csv").write_text((full / "train.csv").read_text())
    (ckpts / "epoch_1.pt").write_bytes((full / "logs/run/checkpoints/epoch_1.pt").read_bytes())
    second = (full / "logs/run/checkpoints/epoch_2.pt").read_bytes()
    (ckpts / "epoch_2.pt").write_bytes(second[: len(second) // 3])
    (cut / "logs/run/drip_metrics.jsonl").write_text(
        (full / "logs/run/drip_metrics.jsonl").read_text().splitlines()[0] + "\n"
    )
    _run_drip_train(cut, *args, "--resume", "latest")
    assert "epoch_2.pt does not load" in (cut / "logs/run/out.log").read_text()
    assert _losses(_metrics(cut)) == _losses(_metrics(full))
    a = torch.load(full / "logs/run/checkpoints/epoch_3.pt", weights_only=True)["state_dict"]
    b = torch.load(ckpts / "epoch_3.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--drip-boundary-loss-weight", "-1", ">= 0"),
        ("--drip-boundary-loss-weight", "nan", "finite"),
        ("--drip-boundary-loss-weight", "inf", "finite"),
        ("--drip-temperature-final", "0", "> 0"),
        ("--drip-temperature-final", "-0.5", "> 0"),
    ],
)
def test_bad_drip_numbers_are_usage_errors(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as stop:
        parse_drip_args(["--model", "DRIP-tiny", flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and expected in err, err


@pytest.mark.slow  # one drip.tools.train process (~20 s CPU)
@needs_extras
def test_fewer_captions_than_the_batch_size_is_a_clear_error(tmp_path):
    """4 image-caption pairs and --batch-size 8: no full step. A message naming the data and the batch size, not a
    bare StopIteration."""
    csv = _write_csv(tmp_path, n=4)
    cmd = [
        sys.executable,
        "-m",
        "drip.tools.train",
        "--model",
        "DRIP-tiny",
        "--train-data",
        csv,
        "--csv-img-key",
        "filepath",
        "--csv-caption-key",
        "title",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--logs",
        str(tmp_path / "logs"),
        "--name",
        "run",
        "--epochs",
        "1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode != 0
    assert "4 sample(s) make no full training step of --batch-size 8" in done.stderr, done.stderr[-2000:]
    assert "StopIteration" not in done.stderr
