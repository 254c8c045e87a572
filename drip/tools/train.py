"""``python -m drip.tools.train``: contrastive training of a DRIP CLIP with open_clip_train's own loop.

Usage: ``python -m drip.tools.train <open_clip_train args> [--drip-boundary-loss-weight W] [--drip-temperature-final T]
[--upcycle-from PATH] [--freeze-except-predictor-epochs K]``. Under torchrun put ``--`` before the arguments:
``torchrun --nproc_per_node 2 -m drip.tools.train -- --model DRIP-4x-B-16 ...`` (torchrun's own parser would take
``--logs`` for an abbreviation of its ``--logs-specs``; the same holds for open_clip_train.main).

Why not ``open_clip_train.main.main``: it is one function that builds its loss with ``open_clip.create_loss`` and
offers no hook for an extra loss term, a per-step temperature or a freeze schedule, and importing it needs its
whole data stack. So this entry point reuses open_clip_train's pieces (argument parser, distributed set-up,
logging, ``get_data``, LR schedules, checkpoint format, and the training loop itself: ``train_one_epoch`` /
``evaluate``) and replaces only main's glue:

* the loss is ``DripLoss(open_clip.create_loss(args))``: open_clip's loss + W * the boundary prior loss;
* the scheduler callable handed to ``train_one_epoch`` also anneals the Gumbel temperature
  (``drip.boundary.temperature_at``) and holds every non-predictor parameter group at lr 0 for the first K
  epochs (frozen without touching ``requires_grad``, so DDP and resuming are unaffected);
* after each epoch the tower's eval thresholds are calibrated on a training batch at the current temperature
  (``DripVisionTransformer.calibrate_eval_thresholds``), so every checkpoint evaluates at its training rate;
* each epoch logs boundary rate, tokens per image, mean step time and peak memory, also to
  ``<logs>/<name>/drip_metrics.jsonl``; the final tower is exported with ``drip.checkpoint.save_drip`` (a plain
  ViT too, as a DRIP config without pooling) to ``<logs>/<name>/checkpoints/drip_tower``.
Not wired: horovod, distillation, remote sync, torch.compile, tracing, bitsandbytes, wandb, --skip-scheduler.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import resource
import sys
import time
from datetime import datetime
from typing import Any

import numpy as np
import torch
from torch import nn

from drip.boundary import temperature_at
from drip.checkpoint import save_drip
from drip.open_clip_integration import DripLoss, drip_tower, register_open_clip, upcycle_clip
from drip.tools.arguments import nonnegative_float, positive_float
from drip.tools.rng_state import capture_rng, restore_rng
from drip.tools.train_checkpoints import latest_checkpoints, resume_run, save_checkpoint
from drip.weights import upcycle

# open_clip_train options this entry point does not wire up (a value other than None / False means "used").
_UNSUPPORTED = (
    "horovod",
    "distill_model",
    "remote_sync",
    "torchcompile",
    "trace",
    "use_bnb_linear",
    "skip_scheduler",
    "copy_codebase",
)


def parse_drip_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split our options from open_clip_train's (which are returned untouched, plus ViT optimizer defaults)."""
    p = argparse.ArgumentParser(prog="python -m drip.tools.train", add_help=False)
    p.add_argument(
        "--drip-boundary-loss-weight",
        type=nonnegative_float,
        default=1.0,
        help="weight (>= 0) of the boundary prior loss",
    )
    p.add_argument(
        "--drip-temperature-final", type=positive_float, default=None, help="anneal the Gumbel temperature to T (> 0)"
    )
    p.add_argument("--upcycle-from", default=None, help="open_clip CLIP checkpoint file or HF CLIP directory")
    p.add_argument("--freeze-except-predictor-epochs", type=int, default=0, help="train only predictors first")
    drip_args, rest = p.parse_known_args(argv)
    if drip_args.freeze_except_predictor_epochs < 0:
        p.error("--freeze-except-predictor-epochs must be >= 0")
    # open_clip_train picks CLIP-paper Adam settings for names containing "vit"; DRIP towers are ViTs too.
    for flag, value in (("--beta1", "0.9"), ("--beta2", "0.98"), ("--eps", "1e-6")):
        if not any(a == flag or a.startswith(flag + "=") for a in rest):
            rest += [flag, value]
    return drip_args, rest


def _check_supported(args: argparse.Namespace) -> None:
    used = [name for name in _UNSUPPORTED if getattr(args, name, None) not in (None, False)]
    if "wandb" in args.report_to or "all" in args.report_to:
        used.append("report_to=wandb")
    if used:
        raise SystemExit(f"drip.tools.train does not support open_clip_train option(s): {', '.join(used)}")


def _random_seed(seed: int, rank: int) -> None:
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)


def _setup_run(args: argparse.Namespace) -> bool:
    """Experiment name, log file, checkpoint dir and ``--resume latest`` as open_clip_train's main sets them."""
    from open_clip_train.distributed import broadcast_object, is_master
    from open_clip_train.logger import setup_logging

    if args.name is None:
        date = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
        date = broadcast_object(args, date) if args.distributed else date
        args.name = f"{date}-model_{args.model.replace('/', '-')}-lr_{args.lr}-b_{args.batch_size}-p_{args.precision}"
    resume_latest = args.resume == "latest"
    base = os.path.join(args.logs, args.name)
    args.log_path = None
    if is_master(args, local=args.log_local):
        os.makedirs(base, exist_ok=True)
        args.log_path = os.path.join(base, f"out-{args.rank}" if args.log_local else "out.log")
        if os.path.exists(args.log_path) and not resume_latest:
            print(f"Error: experiment {base} exists; use --name to pick a new one or --resume latest", file=sys.stderr)
            return False
    setup_logging(args.log_path, logging.DEBUG if args.debug else logging.INFO)
    args.checkpoint_path = os.path.join(base, "checkpoints")
    args.tensorboard = "tensorboard" in args.report_to or "all" in args.report_to
    args.tensorboard_path = os.path.join(base, "tensorboard") if args.tensorboard and is_master(args) else ""
    args.wandb = False
    if is_master(args):
        os.makedirs(args.checkpoint_path, exist_ok=True)
    args.resume_fallbacks = []
    if resume_latest:
        found = latest_checkpoints(args) if is_master(args) else None
        found = broadcast_object(args, found) if args.distributed else found
        args.resume, args.resume_fallbacks = (found[0], found[1:]) if found else (None, [])
    return True


def _build_model(args: argparse.Namespace, drip_args: argparse.Namespace, device: torch.device):
    from drip.text.clip import create_model_and_transforms  # open_clip's, plus Fast-CLIP's pooled text towers

    _random_seed(args.seed, 0)
    if isinstance(args.force_image_size, (tuple, list)) and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    model, pre_train, pre_val = create_model_and_transforms(
        args.model,
        args.pretrained,
        precision=args.precision,
        device=device,
        force_quick_gelu=args.force_quick_gelu,
        force_custom_text=args.force_custom_text,
        force_patch_dropout=args.force_patch_dropout,
        force_image_size=args.force_image_size,
        force_context_length=args.force_context_length,
        image_mean=args.image_mean,
        image_std=args.image_std,
        image_interpolation=args.image_interpolation,
        image_resize_mode=args.image_resize_mode,
        aug_cfg=args.aug_cfg,
        pretrained_image=args.pretrained_image,
        output_dict=True,
        cache_dir=args.cache_dir,
        **({"init_logit_scale": np.log(10), "init_logit_bias": -10} if args.siglip else {}),
    )
    if drip_args.upcycle_from and args.resume:
        logging.info("--resume given: skipping --upcycle-from %s", drip_args.upcycle_from)
    elif drip_args.upcycle_from:
        parts = upcycle_clip(model, drip_args.upcycle_from)
        logging.info("upcycled %s from %s", " + ".join(parts), drip_args.upcycle_from)
    _random_seed(args.seed, args.rank)
    if args.lock_image:
        model.lock_image_tower(args.lock_image_unlocked_groups, args.lock_image_freeze_bn_stats)
    if args.lock_text:
        model.lock_text_tower(args.lock_text_unlocked_layers, args.lock_text_freeze_layer_norm)
    if args.grad_checkpointing:
        model.set_grad_checkpointing()
    return model, pre_train, pre_val


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """open_clip_train's AdamW groups (no decay on gains / biases / logit scale), split predictor vs the rest."""
    opt = getattr(args, "opt", "adamw").lower()
    if opt.startswith("timm/"):
        if args.freeze_except_predictor_epochs:
            raise SystemExit("--freeze-except-predictor-epochs needs --opt adamw")
        from timm.optim import create_optimizer_v2

        extra = {"betas": (args.beta1, args.beta2)} if args.beta1 is not None else {}
        return create_optimizer_v2(model, opt[5:], lr=args.lr, weight_decay=args.wd, eps=args.eps, **extra)
    if opt != "adamw":
        raise SystemExit(f"unknown optimizer {opt!r}")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        groups.setdefault((".predictors." in name, no_decay), []).append(p)
    param_groups = [
        {"params": ps, "weight_decay": 0.0 if no_decay else args.wd, "drip_frozen": not is_pred}
        for (is_pred, no_decay), ps in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)


class DripSchedule:
    """The ``scheduler(step)`` callable train_one_epoch calls each step: LR, DRIP temperature, predictor warm-up.

    During the first ``freeze_steps`` steps the groups marked ``drip_frozen`` get lr 0 (AdamW then leaves those
    weights and their decay untouched; their Adam moments still accumulate).
    """

    def __init__(self, lr_fn, optimizer, tower, total_steps: int, t_final: float | None, freeze_steps: int):
        self.lr_fn, self.optimizer, self.tower = lr_fn, optimizer, tower
        self.total_steps, self.freeze_steps = total_steps, freeze_steps
        self.t_start = tower.cfg.temperature if tower is not None else 1.0
        self.t_final = t_final if t_final is not None else (tower.cfg.temperature_final if tower else None)
        self.temperature = self.t_start

    def __call__(self, step: int) -> None:
        self.lr_fn(step)
        if self.tower is not None:
            self.temperature = temperature_at(step, self.total_steps, self.t_start, self.t_final)
            self.tower.set_temperature(self.temperature)
        if step < self.freeze_steps:  # every group but the predictors' holds still
            for group in self.optimizer.param_groups:
                if group.get("drip_frozen"):
                    group["lr"] = 0.0


def _lr_fn(args: argparse.Namespace, optimizer, total_steps: int, steps_per_epoch: int):
    from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr

    if args.lr_scheduler == "cosine":
        return cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const":
        return const_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const-cooldown":
        if args.epochs_cooldown is None:
            raise SystemExit("--lr-scheduler const-cooldown needs --epochs-cooldown")
        cooldown = steps_per_epoch * args.epochs_cooldown
        return const_lr_cooldown(
            optimizer, args.lr, args.warmup, total_steps, cooldown, args.lr_cooldown_power, args.lr_cooldown_end
        )
    raise SystemExit(f"unknown --lr-scheduler {args.lr_scheduler!r}")


def _get_data(args: argparse.Namespace, preprocess, epoch: int, tokenizer) -> dict[str, Any]:
    try:
        from open_clip_train.data import get_data
    except ImportError as e:
        raise SystemExit(
            f"open_clip_train's data pipeline needs pandas, webdataset and braceexpand ({e}): "
            "pip install 'open_clip_torch[training]'"
        ) from e
    return get_data(args, preprocess, epoch=epoch, tokenizer=tokenizer)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated_mb"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss_mb"  # Linux reports KiB


def epoch_metrics(loss: DripLoss, args: argparse.Namespace, device, seconds: float, steps: int) -> dict[str, Any]:
    """Per-epoch means of DripLoss's running sums (averaged over ranks), step time and peak memory."""
    sums = loss.take_stats()
    sums = torch.zeros(7, device=device) if sums is None else sums.to(device)
    if args.distributed:
        torch.distributed.all_reduce(sums)
    means = (sums[1:] / sums[0].clamp(min=1)).tolist()  # NaN where there is no DRIP tower
    names = ("task_loss", "boundary_loss", "boundary_rate", "tokens_per_image")
    names += ("text_boundary_loss", "text_boundary_rate")  # Fast-CLIP's pooled text tower (None without)
    memory, kind = _peak_memory(device)
    out: dict[str, Any] = {k: None if math.isnan(v) else v for k, v in zip(names, means, strict=True)}
    out.update({"step_time_s": seconds / max(steps, 1), kind: round(memory, 1)})
    return out


def calibrate_on_training_batch(tower, dataloader, device: torch.device, max_images: int = 256) -> None:
    """Set the DRIP tower's eval thresholds so eval keeps the rate training samples at the current temperature,
    on (up to ``max_images`` of) the first training batch; saved with the epoch's checkpoint. No-op without DRIP."""
    if tower is None or not tower.cfg.pool_at:
        return
    images = next(iter(dataloader))[0][:max_images].to(device=device, dtype=next(tower.parameters()).dtype)
    thresholds = tower.calibrate_eval_thresholds(images)
    logging.info("DRIP eval thresholds %s (calibrated on %d training images)", thresholds, len(images))


def _train_epochs(args, model, data, loss, optimizer, scaler, schedule, start_epoch, tokenizer, device) -> None:
    from open_clip_train.distributed import is_master
    from open_clip_train.train import evaluate, train_one_epoch

    writer = None
    if args.tensorboard and is_master(args):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(args.tensorboard_path)
    steps = data["train"].dataloader.num_batches // args.accum_freq
    for epoch in range(start_epoch, args.epochs):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        train_one_epoch(model, data, loss, epoch, optimizer, scaler, schedule, None, args, tb_writer=writer)
        calibrate_on_training_batch(drip_tower(model), data["train"].dataloader, device)
        metrics = {"epoch": epoch + 1, "steps": steps, "temperature": schedule.temperature}
        metrics.update(epoch_metrics(loss, args, device, time.perf_counter() - start, steps))
        if any(k in data for k in ("val", "imagenet-val", "imagenet-v2")):
            evaluate(model, data, epoch + 1, args, tb_writer=writer, tokenizer=tokenizer)
        rng = [capture_rng()]
        if args.distributed:  # every rank's generators, for the master's checkpoint
            rng = [None] * args.world_size
            torch.distributed.all_gather_object(rng, capture_rng())
        if is_master(args):
            logging.info("DRIP epoch %d: %s", epoch + 1, json.dumps(metrics))
            with open(os.path.join(args.logs, args.name, "drip_metrics.jsonl"), "a") as f:
                f.write(json.dumps(metrics) + "\n")
            if args.save_logs:
                save_checkpoint(args, model, optimizer, scaler, epoch + 1, rng)
        if args.distributed:
            torch.distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    """Run training; returns a process exit code."""
    from open_clip import create_loss, get_tokenizer
    from open_clip_train.distributed import init_distributed_device, is_master
    from open_clip_train.params import parse_args

    register_open_clip()
    drip_args, rest = parse_drip_args(sys.argv[1:] if argv is None else list(argv))
    args = parse_args(rest)
    args.freeze_except_predictor_epochs = drip_args.freeze_except_predictor_epochs
    _check_supported(args)
    args.distill = False
    device = init_distributed_device(args)
    if not _setup_run(args):
        return 1
    model, pre_train, pre_val = _build_model(args, drip_args, device)
    tower, unwrapped = drip_tower(model), model
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, args)
    scaler = torch.amp.GradScaler(device=device.type) if args.precision == "amp" else None
    start_epoch, rng = resume_run(args, model, optimizer, scaler)
    tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir, context_length=args.force_context_length)
    data = _get_data(args, (pre_train, pre_val), start_epoch, tokenizer)
    if "train" not in data:
        raise SystemExit("drip.tools.train needs --train-data or --dataset-type synthetic")
    args.save_logs = bool(args.logs) and args.logs.lower() != "none" and is_master(args)
    steps_per_epoch = data["train"].dataloader.num_batches // args.accum_freq
    if steps_per_epoch < 1:
        samples = getattr(data["train"].dataloader, "num_samples", "too few")
        raise SystemExit(
            f"--train-data {args.train_data}: {samples} sample(s) make no full training step of --batch-size "
            f"{args.batch_size} x {args.world_size} rank(s) x --accum-freq {args.accum_freq} (the last partial batch "
            "is dropped); give more samples or a smaller --batch-size"
        )
    total = steps_per_epoch * args.epochs
    lr_fn = _lr_fn(args, optimizer, total, steps_per_epoch)
    schedule = DripSchedule(
        lr_fn,
        optimizer,
        tower,
        total,
        drip_args.drip_temperature_final,
        steps_per_epoch * args.freeze_except_predictor_epochs,
    )
    loss = DripLoss(create_loss(args), model, drip_args.drip_boundary_loss_weight)
    if rng is not None:  # the generators as the saving run left them after its last epoch
        restore_rng(rng)
    _train_epochs(args, model, data, loss, optimizer, scaler, schedule, start_epoch, tokenizer, device)
    if is_master(args):
        # A plain open_clip ViT is exported in DRIP's format too (no pooling), so LLaVA's drip:<dir> tower
        # loads the baseline and the DRIP towers the same way.
        export = tower if tower is not None else upcycle(unwrapped.visual, pool_at=(), prior=())
        save_drip(export, os.path.join(args.checkpoint_path, "drip_tower"))
    if args.distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
