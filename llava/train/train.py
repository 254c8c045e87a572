"""Entry point of LLaVA-1.5 training: ``python -m llava.train.train`` (or ``deepspeed llava/train/train_mem.py``).

Stage 1 (``--tune_mm_mlp_adapter True --version plain``) trains the projector on captions; stage 2 (``--version v1``
with ``--pretrain_mm_mlp_adapter``) instruction-tunes projector + LLM (or LoRA). The vision tower is frozen unless
``--tune_vision_tower predictor|all`` (a DRIP boundary predictor can keep learning; its prior loss then joins the LM
loss with weight ``--drip_prior_loss_weight``). Freezing is decided here, never inside the tower.

Without CUDA the run goes on the CPU with ``use_cpu=True`` (without it HF Trainer + DeepSpeed on CPU miscount the
world size, and plain DDP ranks silently train alone; see README, "LLaVA with DRIP").
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, HfArgumentParser

from drip.file_io import writing
from llava.model import LlavaLlamaForCausalLM
from llava.model.connector.calibrate import calibrate_connector
from llava.model.reduction.apply import apply_token_reduction
from llava.train.args import DataArguments, ModelArguments, TrainingArguments
from llava.train.checkpointing import refuse_untrained_save, save_lora, save_mm_projector
from llava.train.data import (
    DataCollatorForSupervisedDataset,
    DatasetOptions,
    LazySupervisedDataset,
    check_records,
    expected_visual_tokens,
)
from llava.train.resume import LAST_OUTPUT, CheckpointError, finished_run, resume_point, verify_checkpoint
from llava.train.trainer import LLaVATrainer

logger = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    if not torch.cuda.is_available() and not any(a.startswith("--use_cpu") for a in argv):
        argv = [*argv, "--use_cpu", "True"]
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(argv)


def check_inputs(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Fail on missing inputs before anything heavy is loaded (a typo should cost seconds, not a model load)."""
    if model_args.vision_tower is None:
        raise ValueError("--vision_tower is required (an HF CLIP dir/name, or drip:<preset|checkpoint dir>)")
    base = model_args.model_name_or_path
    if base is not None and os.path.isdir(base) and not os.path.isfile(os.path.join(base, "config.json")):
        raise FileNotFoundError(f"--model_name_or_path {base}: a directory without config.json (not an HF checkpoint)")
    if data_args.data_path is None:
        raise ValueError("--data_path is required (LLaVA's JSON list of conversation records)")
    if not os.path.isfile(data_args.data_path):
        raise FileNotFoundError(f"--data_path {data_args.data_path}: no such file")
    if data_args.image_folder is not None and not os.path.isdir(data_args.image_folder):
        raise FileNotFoundError(f"--image_folder {data_args.image_folder}: no such directory")


def load_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
    )
    if tokenizer.pad_token is None:  # LLaVA-1.5 (Vicuna) pads with unk
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def dtype_of(training_args: TrainingArguments) -> torch.dtype:
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def cast_parameters_for_deepspeed(model: torch.nn.Module, training_args: TrainingArguments) -> None:
    """Under DeepSpeed with ``--bf16`` / ``--fp16``: every parameter in the training dtype before it starts.

    DeepSpeed flattens the parameters it partitions into one buffer per group and requires one dtype; ZeRO-3 does not
    cast a model built under ``zero.Init``. The LLM loads in the training dtype, but the tower and projector are built
    after it in fp32 (and peft keeps LoRA weights in fp32), so they are cast here, as LLaVA casts its model after
    peft. Parameters only: buffers keep their dtype (DRIP's fp32 eval thresholds). DeepSpeed's optimizer holds fp32
    master weights; without DeepSpeed nothing is cast (the Trainer's autocast runs fp32 parameters as they are).
    """
    dtype = dtype_of(training_args)
    if not training_args.deepspeed or dtype == torch.float32:
        return
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)


def set_trainable(model: torch.nn.Module, model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """LLaVA's freezing rules, plus the tower's (which LLaVA always froze). Decided here, never inside a module."""
    inner = model.get_model()
    if model_args.freeze_backbone:
        inner.requires_grad_(False)
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
    inner.mm_projector.requires_grad_(not training_args.freeze_mm_mlp_adapter)
    connector = inner.get_connector()
    if connector is not None:  # trains with the projector (stage 1 and 2); a DRIP connector adds its prior loss
        connector.requires_grad_(not training_args.freeze_mm_mlp_adapter)
        if hasattr(connector, "set_prior_loss_weight"):
            connector.set_prior_loss_weight(training_args.drip_prior_loss_weight)
    if model_args.tune_mm_mlp_adapter and model_args.mm_use_im_start_end:
        # LLaVA: stage 1 also trains the input embeddings that <im_start>/<im_end> were added to (saved with the
        # projector in mm_projector.bin); the output embeddings stay frozen.
        model.get_input_embeddings().requires_grad_(True)
    tower = model.get_vision_tower()
    tower.set_trainable(training_args.tune_vision_tower)
    if training_args.tune_vision_tower != "none" and tower.prior_loss_weight is not None:
        # The prior loss joins the LM loss (llava_llama adds it while it has a gradient), with this weight.
        tower.set_prior_loss_weight(training_args.drip_prior_loss_weight)


def lora_target_modules(model: torch.nn.Module) -> list[str]:
    """Full names of the LLM's linear layers (never the tower's, the projector's or lm_head).

    peft matches a bare name such as ``q_proj`` as a suffix, which would also catch a CLIP tower's attention
    projections; full names leave the tower (trained or not, it is saved whole in ``non_lora_trainables.bin``) alone.
    """
    skip = ("mm_projector", "mm_connector", "vision_tower", "lm_head")
    return sorted(
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not any(s in n for s in skip)
    )


def apply_lora(model: torch.nn.Module, training_args: TrainingArguments) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=lora_target_modules(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def build_model(model_args: ModelArguments, training_args: TrainingArguments, tokenizer):
    model = LlavaLlamaForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        dtype=dtype_of(training_args),
        attn_implementation=model_args.attn_implementation,
    )
    model.config.use_cache = False
    model.get_model().initialize_vision_modules(model_args=model_args)
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)  # records mm_use_im_* (adds tokens if asked)
    model.configure(
        tokenizer_padding_side=tokenizer.padding_side,
        tokenizer_model_max_length=tokenizer.model_max_length,
        tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter,
        freeze_mm_mlp_adapter=training_args.freeze_mm_mlp_adapter,
        projector_lr=training_args.mm_projector_lr,
        packing=training_args.packing,
    )
    apply_token_reduction(model, model_args.token_reduction)  # first: it may turn off a FastV the base recorded
    if model_args.pdrop is not None:
        model.set_pdrop(model_args.pdrop)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    set_trainable(model, model_args, training_args)
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
        set_trainable(model.base_model.model, model_args, training_args)  # projector/tower choices survive peft
    cast_parameters_for_deepspeed(model, training_args)
    return model


def calibration_pixels(dataset: LazySupervisedDataset, count: int = 32) -> list[torch.Tensor]:
    """The processed images of the first ``count`` training samples that have one (the calibration set)."""
    pixels = []
    for i, record in enumerate(dataset.records):
        if len(pixels) == count:
            break
        if "image" in record and "image" in (sample := dataset[i]):  # a skipped sample hands on the next one
            pixels.append(sample["image"])
    return pixels


def loss_summary(log_history: list[dict]) -> dict:
    losses = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    if not losses:
        return {}
    k = max(1, len(losses) // 5)
    return {
        "steps": losses[-1][0],
        "first_loss": losses[0][1],
        "last_loss": losses[-1][1],
        "mean_first_fifth": sum(v for _, v in losses[:k]) / k,
        "mean_last_fifth": sum(v for _, v in losses[-k:]) / k,
        "curve": losses,
    }


def save_outputs(trainer: LLaVATrainer, model, model_args: ModelArguments, training_args: TrainingArguments) -> None:
    out = training_args.output_dir
    refuse_untrained_save(trainer.state.global_step, out)
    # Every rank calls the savers (gathering ZeRO-3 shards is a collective); only the saving rank writes.
    if model_args.tune_mm_mlp_adapter:
        save_mm_projector(model, out, write=trainer.args.should_save)
        if trainer.args.should_save:
            model.config.save_pretrained(out)
    elif training_args.lora_enable:
        save_lora(model, out, write=trainer.args.should_save)
        if trainer.args.should_save:
            model.base_model.model.config.save_pretrained(out)
    else:
        with writing(out):  # a full disk: an error naming the folder, not safetensors' or torch's bare one
            trainer.save_model(out)
    if trainer.args.should_save:
        summary = loss_summary(trainer.state.log_history)
        Path(out, "loss_curve.json").write_text(json.dumps(summary, indent=1))
        if summary:
            print(
                f"[train] {summary['steps']} steps: loss {summary['mean_first_fifth']:.3f} (first fifth) -> "
                f"{summary['mean_last_fifth']:.3f} (last fifth); curve in {out}/loss_curve.json",
                flush=True,
            )


def already_finished(resume: str, training_args: TrainingArguments) -> bool:
    """True when the run resumed at ``resume`` has nothing left to train and its final model is saved (a rerun is
    then a no-op); raises CheckpointError when it is finished but its final save never completed."""
    done = finished_run(resume, training_args.max_steps, training_args.num_train_epochs)
    if done is None:
        return False
    out = Path(training_args.output_dir)
    if not (out / LAST_OUTPUT).is_file():
        raise CheckpointError(
            f"{resume} is the end of this run ({done}), but its final model was never saved to {out} (killed while "
            "saving?). The checkpoint holds the trained weights; pass --overwrite_output_dir True to train afresh, "
            "or raise --max_steps / --num_train_epochs to train on"
        )
    print(
        f"[train] {out} holds the finished run ({Path(resume).name}: {done}): nothing to train; raise --max_steps / "
        "--num_train_epochs to train on, or pass --overwrite_output_dir True to train afresh",
        flush=True,
    )
    return True


def train(argv: list[str] | None = None, callbacks: list | None = None) -> LLaVATrainer | None:
    """Parse ``argv`` (default: sys.argv), build model and data, train, save; returns the trainer (None when the run
    was already finished)."""
    model_args, data_args, training_args = parse_args(list(sys.argv[1:] if argv is None else argv))
    args = training_args  # a rerun resumes from the latest checkpoint (LLaVA); llava.train.resume has the rules
    resume = resume_point(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    if resume is not None:
        verify_checkpoint(resume, trust=training_args.trust_checkpoint)  # before DeepSpeed unpickles it
        if already_finished(resume, training_args):
            return None
    if training_args.deepspeed and not torch.cuda.is_available():
        # accelerate's CPU path starts torch.distributed but not deepspeed.comm; ZeRO-3's zero.Init inside
        # from_pretrained would then see a world size of 1 and reject the batch-size arithmetic.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    transformers.set_seed(training_args.seed)
    check_inputs(model_args, data_args)
    records = check_records(data_args.data_path, data_args.image_folder, data_args.skip_bad_images)  # no model yet
    tokenizer = load_tokenizer(model_args, training_args)
    model = build_model(model_args, training_args, tokenizer)
    model.configure(image_aspect_ratio=data_args.image_aspect_ratio)
    tower, connector = model.get_vision_tower(), model.get_model().get_connector()
    opts = DatasetOptions(
        version=model_args.version,
        image_folder=data_args.image_folder,
        image_aspect_ratio=data_args.image_aspect_ratio,
        model_max_length=training_args.model_max_length,
        image_token_budget=tower.num_patches,
        mm_use_im_start_end=model_args.mm_use_im_start_end,
        expected_image_tokens=expected_visual_tokens(tower) if connector is None else connector.expected_tokens(),
        skip_bad_images=data_args.skip_bad_images,
    )
    dataset = LazySupervisedDataset(data_args.data_path, tokenizer, tower.image_processor, opts, records)
    trainer = LLaVATrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorForSupervisedDataset(tokenizer),
        processing_class=tokenizer,
        tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    model.config.use_cache = True
    calibrate_connector(model, calibration_pixels(dataset))  # on every rank (ZeRO-3 gathers): same images, same value
    save_outputs(trainer, model, model_args, training_args)
    if dataset.skipped:
        print(f"[train] skipped {len(dataset.skipped)} sample(s) longer than model_max_length", flush=True)
    return trainer


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train()
    finish_distributed()


def finish_distributed() -> None:
    """Leave a multi-process run cleanly: after training, a DeepSpeed/gloo rank can abort at interpreter shutdown
    (its async all-gather thread races finalisation; ENVIRONMENT.md measured 5 of 12 runs). Barrier, destroy the
    process group, flush, and exit without running finalisers."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
