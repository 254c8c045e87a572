"""Multi-process LLaVA training on CPU (slow, kept out of CI): 2 processes under ``torchrun`` (plain DDP) and under
DeepSpeed's launcher (ZeRO-2, ZeRO-3, CPU accelerator with gloo) both finish, both ranks end with identical
weights, and DDP and ZeRO reach the same losses and weights on the same tiny run (stage 2: LLM + projector, DRIP-tiny
tower frozen). Packed LLM batches (the default) and ``--packing False`` reach the same losses and weights under
ZeRO-2/3, and token-budget batches (``--max_tokens_per_batch``) run on two ZeRO-3 ranks. ZeRO-3 on CPU needs
deepspeed.comm started before ``from_pretrained`` (``llava.train.train`` does it).
Under ZeRO-3 with 2 ranks: a stage-1 run saves ``mm_projector.bin`` and a LoRA run saves its adapter (the savers
gather on every rank), both load back with logits equal to the same run on 1 process; a step where one rank's batch
is text-only finishes with DDP's losses and weights (the zero-contribution path through tower and projector).

This file is also the entry point the launchers start (``python tests/llava/test_multiprocess.py <train flags>``): it
runs ``llava.train.train.train`` with a callback that, at the end of training, writes each rank's world size, loss
curve, optimizer classes and a SHA-256 of its parameters (gathered first under ZeRO-3) to ``$RANK_REPORT_DIR``.

    .venv/bin/python -m pytest -m slow tests/llava/test_multiprocess.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
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
RUN_TIMEOUT = int(os.environ.get("MULTIPROCESS_TIMEOUT", "600"))  # a ZeRO-3 collective mismatch hangs until killed


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
    """At train end, writes ``rank<i>.json`` (and rank 0's trainable parameters) to ``out``; records for every
    forward whether this rank's batch had images."""

    def __init__(self, out: Path):
        self.out = out
        self.image_batches: list[bool] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        record = lambda _module, _args, kw: self.image_batches.append(kw.get("images") is not None)
        model.register_forward_pre_hook(record, with_kwargs=True)

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        digest, trainable = parameter_report(model)
        report = {
            "rank": args.process_index,
            "world_size": args.world_size,
            "global_step": state.global_step,
            "losses": [h["loss"] for h in state.log_history if "loss" in h],
            "optimizer": optimizer_classes(optimizer),
            "sha256": digest,
            "image_batches": self.image_batches,
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
    instruct = json.loads((out / "instruct.json").read_text())
    records = [r for r in instruct if "image" in r]
    (out / "instruct_images.json").write_text(json.dumps(records))
    # 6 image + 2 text records, batch 2 on 2 ranks (megabatches of 4): the modality sampler's full image megabatch,
    # then the 2 left-over images next to the 2 texts, so the second step gives rank 0 images and rank 1 none.
    (out / "mixed.json").write_text(json.dumps(records[:6] + [r for r in instruct if "image" not in r][:2]))
    return out


@pytest.fixture(scope="module")
def base_llm(world, tmp_path_factory, save_tiny_base_llm) -> Path:
    return save_tiny_base_llm(world, tmp_path_factory.mktemp("base"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VARIANTS = {"padded": ("--packing", "False"), "budget": ("--max_tokens_per_batch", "300")}  # launch(backend, name, _)


def launcher(backend: str) -> list[str]:
    """2 CPU processes: torchrun (plain DDP) or DeepSpeed's launcher with a ZeRO config (no optimizer block);
    "single": one plain process."""
    if backend == "single":
        return [sys.executable, __file__]
    if backend == "ddp":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            __file__,
        ]
    stage = {"zero2": "scripts/zero2.json", "zero3": "scripts/zero3.json"}[backend]
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        __file__,
        "--deepspeed",
        stage,
    ]


def train_flags(world: Path, base_llm: Path, out: Path) -> list[str]:
    # imported here, on the test side: the launched ranks run this file as a script, where ``tests`` is not ours
    from tests.llava.tiny_runs import tiny_run_argv

    flags = ["--mm_vision_select_layer", "-2", "--max_steps", str(STEPS), "--group_by_modality_length", "True"]
    data = world / "instruct_images.json"
    return tiny_run_argv(base_llm, world, out, *flags, "--save_strategy", "no", data=data, batch=2)


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


def run_training(cmd: list[str], out: Path, ranks: int) -> tuple[list[dict], dict[str, torch.Tensor]] | str:
    """Run one launch; its rank reports and rank 0's trainable parameters, or the log of a failed / hung run."""
    start = time.time()
    # its own session, so that a hung run's ranks (the launcher's children) are killed with it
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=launch_env(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return f"hung: killed after {RUN_TIMEOUT} s\n{output[-3000:]}"
    log = f"exit {proc.returncode} after {time.time() - start:.0f} s\n{output[-6000:]}"
    print(f"{out.name}: {log.splitlines()[0]}")  # the run's wall time, for the record (pytest -s)
    reports = sorted((json.loads(p.read_text()) for p in out.glob("rank*.json")), key=lambda r: r["rank"])
    if proc.returncode != 0 or [r["rank"] for r in reports] != list(range(ranks)):
        return log
    return reports, torch.load(out / "trainable_rank0.pt")


@pytest.fixture(scope="module")
def launch(world, base_llm, tmp_path_factory):
    """(backend, run name, extra flags, data file) -> (rank reports, rank 0's trainable parameters, output dir);
    each (backend, name) is launched once (a failed launch fails every test that asks for it, with its output)."""
    done: dict[tuple[str, str], tuple[list[dict], dict[str, torch.Tensor], Path] | str] = {}

    def run(backend: str, name: str = "stage2", extra: tuple[str, ...] = (), data: str = "instruct_images.json"):
        if (backend, name) not in done:
            out = tmp_path_factory.mktemp(f"{name}-{backend}")
            flags = [*train_flags(world, base_llm, out / "model"), "--data_path", str(world / data), *extra]
            result = run_training([*launcher(backend), *flags], out, 1 if backend == "single" else 2)
            done[backend, name] = result if isinstance(result, str) else (*result, out / "model")
        assert not isinstance(done[backend, name], str), f"{name} / {backend}: {done[backend, name]}"
        return done[backend, name]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3"])
def test_two_ranks_finish_with_the_same_weights(launch, backend):
    reports, trainable, _ = launch(backend)
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
    (ddp, ddp_params, _), (ds, ds_params, _) = launch("ddp"), launch(zero)
    assert ds[0]["losses"] == pytest.approx(ddp[0]["losses"], rel=1e-4), (ddp[0]["losses"], ds[0]["losses"])
    assert ddp[0]["losses"][0] != ddp[0]["losses"][-1]  # it trained
    assert ds_params.keys() == ddp_params.keys()
    for name, p in ddp_params.items():
        # Adam amplifies reduction-order noise where gradients are tiny; a skipped or wrong step moves ~lr (1e-3)
        torch.testing.assert_close(ds_params[name], p, rtol=1e-4, atol=5e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_packed_zero_run_equals_padded_zero_run(launch, zero):
    packed, packed_params, _ = launch(zero)  # packing is the default
    padded, padded_params, _ = launch(zero, "padded", VARIANTS["padded"])
    a, b = packed[0]["losses"], padded[0]["losses"]
    assert a == pytest.approx(b, rel=1e-4), (a, b)
    for name, p in padded_params.items():
        torch.testing.assert_close(packed_params[name], p, rtol=1e-4, atol=5e-5, msg=name)


@pytest.mark.slow
def test_token_budget_batches_on_two_zero3_ranks(launch):
    reports, _, _ = launch("zero3", "budget", VARIANTS["budget"])
    assert [r["world_size"] for r in reports] == [2, 2] and all(r["global_step"] == STEPS for r in reports)
    assert reports[0]["sha256"] == reports[1]["sha256"] and reports[0]["losses"] == reports[1]["losses"]


# --- ZeRO-3 saving (stage 1, LoRA) and text-only batches --------------------------------------------------------------
STAGE1 = ("--version", "plain", "--tune_mm_mlp_adapter", "True", "--save_strategy", "steps", "--save_steps", str(STEPS))
LORA = ("--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--mm_projector_lr", "1e-3")
ONE_RANK_BATCH = ("--per_device_train_batch_size", "4")  # 1 process x 4 = 2 ranks x 2: the same global batches


def loaded_logits(model_dir: Path, base_llm: Path, world: Path) -> torch.Tensor:
    """[1, T, V] logits of the checkpoint in ``model_dir`` (on top of ``base_llm``) for one image question."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import load_image, process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    torch.manual_seed(0)  # DRIP-tiny's tower is not in these checkpoints: the same random init for every load
    tokenizer, model, processor, _ = load_pretrained_model(str(model_dir), str(base_llm), device="cpu")
    record = json.loads((world / "instruct_images.json").read_text())[0]
    image = process_images([load_image(str(world / "images" / record["image"]))], processor, model.config)
    ids = tokenizer_image_token("<image>\nWhat is in the picture?", tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=ids[None], images=image).logits


def assert_same_run(two: list[dict], one: list[dict]) -> None:
    assert [r["world_size"] for r in two] == [2, 2] and one[0]["world_size"] == 1
    assert two[0]["global_step"] == one[0]["global_step"] == STEPS
    assert two[0]["losses"] == pytest.approx(one[0]["losses"], rel=1e-4), (two[0]["losses"], one[0]["losses"])
    assert two[0]["losses"][0] != two[0]["losses"][-1]  # it trained


@pytest.mark.slow
def test_zero3_stage1_saves_mm_projector_equal_to_one_rank(launch, base_llm, world):
    two, _, two_dir = launch("zero3", "stage1", STAGE1, "pretrain.json")
    one, _, one_dir = launch("single", "stage1", (*STAGE1, *ONE_RANK_BATCH), "pretrain.json")
    assert_same_run(two, one)
    final = torch.load(two_dir / "mm_projector.bin", weights_only=True)
    in_checkpoint = torch.load(two_dir / f"checkpoint-{STEPS}" / "mm_projector.bin", weights_only=True)
    assert final.keys() == in_checkpoint.keys() and all(torch.equal(final[k], in_checkpoint[k]) for k in final)
    assert all(t.numel() > 0 for t in final.values())  # gathered, not an empty ZeRO-3 partition
    alone = torch.load(one_dir / "mm_projector.bin", weights_only=True)
    assert alone.keys() == final.keys()
    for k in final:
        torch.testing.assert_close(final[k], alone[k], rtol=1e-4, atol=5e-5, msg=k)
    torch.testing.assert_close(
        loaded_logits(two_dir, base_llm, world), loaded_logits(one_dir, base_llm, world), rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_zero3_lora_saves_and_loads_back(launch, base_llm, world):
    """A 2-rank ZeRO-3 LoRA run saves its adapter and trainables; they load back with logits equal to the same run
    on 1 process. LoRA dropout is off: its masks come from each process's RNG, so 2 ranks of batch 2 draw other
    masks than 1 process of batch 4 (with LLaVA's 0.05 the LoRA B weights differed by up to 4e-3 after 4 steps; with
    0 they agree to 1.3e-7)."""
    from safetensors.torch import load_file

    lora = (*LORA, "--lora_dropout", "0")
    two, trained, two_dir = launch("zero3", "lora", lora)
    one, alone, one_dir = launch("single", "lora", (*lora, *ONE_RANK_BATCH))
    assert_same_run(two, one)
    assert trained.keys() == alone.keys()
    for k in trained:
        torch.testing.assert_close(trained[k], alone[k], rtol=1e-4, atol=5e-5, msg=k)
    assert {"adapter_config.json", "non_lora_trainables.bin", "config.json"} <= {p.name for p in two_dir.iterdir()}
    # what was saved is what rank 0 held (gathered) at the end of training, every trainable tensor of it
    adapter = load_file(two_dir / "adapter_model.safetensors")
    saved = {k.replace(".weight", ".default.weight"): v for k, v in adapter.items()}
    saved.update(torch.load(two_dir / "non_lora_trainables.bin", weights_only=True))
    assert saved.keys() == trained.keys()
    assert all(torch.equal(saved[k], trained[k]) for k in saved)
    # and it loads back (LoRA merged into the base): logits equal the 1-rank checkpoint's
    torch.testing.assert_close(
        loaded_logits(two_dir, base_llm, world), loaded_logits(one_dir, base_llm, world), rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_zero3_step_with_a_text_only_rank_matches_ddp(launch):
    ddp, ddp_params, _ = launch("ddp", "mixed", (), "mixed.json")
    zero, zero_params, _ = launch("zero3", "mixed", (), "mixed.json")
    # some step had images on rank 0 and none on rank 1 (the sampler's left-over megabatch straddles the ranks)
    mixed = [a and not b for a, b in zip(zero[0]["image_batches"], zero[1]["image_batches"], strict=True)]
    assert any(mixed), (zero[0]["image_batches"], zero[1]["image_batches"])
    assert zero[0]["losses"] == pytest.approx(ddp[0]["losses"], rel=1e-4), (ddp[0]["losses"], zero[0]["losses"])
    for name, p in ddp_params.items():  # both optimizers now see a (zero) projector gradient on text-only steps
        torch.testing.assert_close(zero_params[name], p, rtol=1e-4, atol=5e-5, msg=name)


@pytest.mark.slow
def test_zero3_trains_in_bf16_with_a_text_only_rank(launch):
    """``--bf16 True`` (the GPU preset): the LLM loads in bf16 under zero.Init, tower and projector are built after
    it; every parameter DeepSpeed partitions must share one dtype, on the rank without images too. (``--fp16 True``
    cannot run here: DeepSpeed's CPU accelerator refuses it in ``DeepSpeedEngine._do_sanity_check``, "Type fp16 is
    not supported on your device"; tests/llava/test_train.py checks the fp16 cast itself.)"""
    reports, trainable, _ = launch("zero3", "bf16", ("--bf16", "True"), "mixed.json")
    assert [r["world_size"] for r in reports] == [2, 2] and all(r["global_step"] == STEPS for r in reports)
    assert reports[0]["sha256"] == reports[1]["sha256"] and reports[0]["losses"] == reports[1]["losses"]
    mixed = [a and not b for a, b in zip(reports[0]["image_batches"], reports[1]["image_batches"], strict=True)]
    assert any(mixed), (reports[0]["image_batches"], reports[1]["image_batches"])
    losses = reports[0]["losses"]
    assert all(math.isfinite(v) for v in losses) and losses[0] != losses[-1], losses
    assert any("mm_projector" in n for n in trainable)


if __name__ == "__main__":
    entry(sys.argv[1:])
