"""Multi-process LLaVA training on CPU (slow, kept out of CI): 2 processes under ``torchrun`` (plain DDP) and under
DeepSpeed's launcher (ZeRO-2, ZeRO-3, CPU accelerator with gloo) both finish, both ranks end with identical
weights, and DDP and ZeRO reach the same losses and weights on the same tiny run (stage 2: LLM + projector, DRIP-tiny
tower frozen). Packed LLM batches (the default) and ``--packing False`` reach the same losses and weights under
ZeRO-2/3, and token-budget batches (``--max_tokens_per_batch``) run on two ZeRO-3 ranks. ZeRO-3 on CPU needs
deepspeed.comm started before ``from_pretrained`` (``llava.train.train`` does it).

This file is also the entry point the launchers start (``python tests/llava/test_multiprocess.py <train flags>``): it
runs ``llava.train.train.train`` with a callback that, at the end of training, writes each rank's world size, loss
curve, optimizer classes and a SHA-256 of its parameters (gathered first under ZeRO-3) to ``$RANK_REPORT_DIR``.

    .venv/bin/python -m pytest -m slow tests/llava/test_multiprocess.py
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[2]
REPORT_ENV = "RANK_REPORT_DIR"
STEPS = 4


# --- the entry point side (runs inside every launched rank) ----------------------------------------------------------
def optimizer_classes(optimizer: object) -> list[str]:
    """Class names along the ``.optimizer`` chain (accelerate / DeepSpeed wrap the torch optimizer)."""
    names = []
    for _ in range(6):
        if optimizer is None:
            break
        names.append(type(optimizer).__name__)
        optimizer = getattr(optimizer, "optimizer", None)
    return names


def parameter_report(model: torch.nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """(SHA-256 over every parameter's name and fp32 bytes, {name: trainable parameter}); ZeRO-3 shards are gathered
    (a collective: every rank must call this)."""
    params = dict(model.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None)
    else:
        gather = torch.no_grad()
    digest, trainable = hashlib.sha256(), {}
    with gather:
        for name in sorted(params):
            p = params[name].detach().float().cpu().contiguous()
            digest.update(name.encode() + p.numpy().tobytes())
            if params[name].requires_grad:
                trainable[name] = p.clone()
    return digest.hexdigest(), trainable


class RankReport(TrainerCallback):
    """At train end, writes ``rank<i>.json`` (and rank 0's trainable parameters) to ``out``."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        digest, trainable = parameter_report(model)
        report = {
            "rank": args.process_index,
            "world_size": args.world_size,
            "global_step": state.global_step,
            "losses": [h["loss"] for h in state.log_history if "loss" in h],
            "optimizer": optimizer_classes(optimizer),
            "sha256": digest,
        }
        (self.out / f"rank{args.process_index}.json").write_text(json.dumps(report))
        if args.process_index == 0:
            torch.save(trainable, self.out / "trainable_rank0.pt")


def entry(argv: list[str]) -> None:
    from llava.train.train import finish_distributed, train

    train(argv, callbacks=[RankReport(Path(os.environ[REPORT_ENV]))])
    finish_distributed()


# --- the test side ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small demo world plus ``instruct_images.json``: its conversations that have an image. Text-only batches
    leave the projector without a gradient, and there the optimizers differ by design: torch's AdamW (DDP) skips a
    parameter whose grad is None, ZeRO's flat buffers hand it a zero gradient and momentum still moves it."""
    from llava_drip_demo.demo_world import WorldConfig, generate

    out = tmp_path_factory.mktemp("world")
    generate(out, WorldConfig(n_pretrain=8, n_instruct=24, n_sqa=4, n_bench=3, n_clip=4, n_zeroshot_per_class=1))
    records = [r for r in json.loads((out / "instruct.json").read_text()) if "image" in r]
    (out / "instruct_images.json").write_text(json.dumps(records))
    return out


@pytest.fixture(scope="module")
def base_llm(world, tmp_path_factory, save_tiny_base_llm) -> Path:
    return save_tiny_base_llm(world, tmp_path_factory.mktemp("base"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VARIANTS = {"padded": ["--packing", "False"], "budget": ["--max_tokens_per_batch", "300"]}  # "<backend>+<variant>"


def launcher(backend: str) -> list[str]:
    """2 CPU processes: torchrun (plain DDP) or DeepSpeed's launcher with a ZeRO config (no optimizer block)."""
    backend = backend.split("+")[0]
    if backend == "ddp":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port()), __file__]  # fmt: skip
    stage = {"zero2": "scripts/zero2.json", "zero3": "scripts/zero3.json"}[backend]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
            __file__, "--deepspeed", stage]  # fmt: skip


def train_flags(world: Path, base_llm: Path, out: Path) -> list[str]:
    return [
        "--model_name_or_path", str(base_llm), "--version", "v1", "--data_path", str(world / "instruct_images.json"),
        "--image_folder", str(world / "images"), "--vision_tower", "drip:DRIP-tiny", "--mm_vision_select_layer", "-2",
        "--mm_projector_type", "mlp2x_gelu", "--output_dir", str(out), "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3", "--max_steps", str(STEPS), "--model_max_length", "256", "--logging_steps", "1",
        "--report_to", "none", "--seed", "0", "--dataloader_num_workers", "0", "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "True", "--save_strategy", "no",
    ]  # fmt: skip


def launch_env(report_dir: Path) -> dict[str, str]:
    """The launched ranks' environment: DeepSpeed's CPU accelerator, its JIT ops cached in the repository (as
    scripts/v1_5/common.sh does), the repository importable, one thread per rank."""
    env = dict(os.environ)
    env.pop("ACCELERATE_USE_CPU", None)  # it would silently drop the DeepSpeed config and run plain DDP
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    path = [str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update(PYTHONPATH=os.pathsep.join(path), **{REPORT_ENV: str(report_dir)})
    return env


@pytest.fixture(scope="module")
def launch(world, base_llm, tmp_path_factory):
    """backend -> (its two rank reports, rank 0's trainable parameters); each backend is launched once (a failed
    launch fails every test that asks for it, with the launcher's output)."""
    done: dict[str, tuple[list[dict], dict[str, torch.Tensor]] | str] = {}

    def run(backend: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
        if backend not in done:
            out = tmp_path_factory.mktemp(backend.replace("+", "_"))
            variant = VARIANTS[backend.split("+")[1]] if "+" in backend else []
            cmd = [*launcher(backend), *train_flags(world, base_llm, out / "model"), *variant]
            start = time.time()
            proc = subprocess.run(cmd, cwd=REPO, env=launch_env(out), capture_output=True, text=True, timeout=600)
            log = f"{backend}: exit {proc.returncode} after {time.time() - start:.0f} s\n"
            log += f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            reports = sorted((json.loads(p.read_text()) for p in out.glob("rank*.json")), key=lambda r: r["rank"])
            ok = proc.returncode == 0 and [r["rank"] for r in reports] == [0, 1]
            done[backend] = (reports, torch.load(out / "trainable_rank0.pt")) if ok else log
        assert not isinstance(done[backend], str), done[backend]
        return done[backend]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3"])
def test_two_ranks_finish_with_the_same_weights(launch, backend):
    reports, trainable = launch(backend)
    for r in reports:
        assert r["world_size"] == 2, r  # plain DDP without use_cpu=True would train each rank alone
        assert r["global_step"] == STEPS and len(r["losses"]) == STEPS, r
    assert reports[0]["sha256"] == reports[1]["sha256"]
    assert reports[0]["losses"] == reports[1]["losses"]  # the logged loss is the mean over ranks
    uses_zero = any("Zero" in name for name in reports[0]["optimizer"])
    assert uses_zero == (backend != "ddp"), reports[0]["optimizer"]  # ACCELERATE_USE_CPU would drop DeepSpeed
    assert any("mm_projector" in n for n in trainable) and any("layers.0." in n for n in trainable)  # stage 2
    assert not any("vision_tower" in n for n in trainable)  # the tower stays frozen


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_ddp_and_zero_reach_the_same_loss_and_weights(launch, zero):
    (ddp, ddp_params), (ds, ds_params) = launch("ddp"), launch(zero)
    assert ds[0]["losses"] == pytest.approx(ddp[0]["losses"], rel=1e-4), (ddp[0]["losses"], ds[0]["losses"])
    assert ddp[0]["losses"][0] != ddp[0]["losses"][-1]  # it trained
    assert ds_params.keys() == ddp_params.keys()
    for name, p in ddp_params.items():
        # Adam amplifies reduction-order noise where gradients are tiny; a skipped or wrong step moves ~lr (1e-3)
        torch.testing.assert_close(ds_params[name], p, rtol=1e-4, atol=5e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_packed_zero_run_equals_padded_zero_run(launch, zero):
    (packed, packed_params), (padded, padded_params) = launch(zero), launch(f"{zero}+padded")  # packing is the default
    a, b = packed[0]["losses"], padded[0]["losses"]
    assert a == pytest.approx(b, rel=1e-4), (a, b)
    for name, p in padded_params.items():
        torch.testing.assert_close(packed_params[name], p, rtol=1e-4, atol=5e-5, msg=name)


@pytest.mark.slow
def test_token_budget_batches_on_two_zero3_ranks(launch):
    reports, _ = launch("zero3+budget")
    assert [r["world_size"] for r in reports] == [2, 2] and all(r["global_step"] == STEPS for r in reports)
    assert reports[0]["sha256"] == reports[1]["sha256"] and reports[0]["losses"] == reports[1]["losses"]


if __name__ == "__main__":
    entry(sys.argv[1:])
