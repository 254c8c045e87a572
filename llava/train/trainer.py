"""LLaVATrainer: HF Trainer with LLaVA's projector learning rate, modality-grouped or token-budget batches and
stage-1 saving."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from drip.file_io import writing
from llava.train.checkpointing import save_mm_projector
from llava.train.data import ModalityLengthGroupedSampler, TokenBudgetBatchSampler


class LLaVATrainer(Trainer):
    def __init__(self, *args, tune_mm_mlp_adapter: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.tune_mm_mlp_adapter = tune_mm_mlp_adapter

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.group_by_modality_length and hasattr(dataset, "modality_lengths"):
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return ModalityLengthGroupedSampler(dataset.modality_lengths, batch, self.args.world_size, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self) -> DataLoader:
        """With ``--max_tokens_per_batch``: batches cut by a token budget (``TokenBudgetBatchSampler``), counted as
        real tokens with packing and as padded tokens without; accelerate shards the batches over the ranks."""
        budget = self.args.max_tokens_per_batch
        if budget is None:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        if not hasattr(dataset, "modality_lengths"):
            raise ValueError("--max_tokens_per_batch needs a dataset with modality_lengths (LazySupervisedDataset)")
        sampler = TokenBudgetBatchSampler(
            dataset.modality_lengths,
            budget,
            world_size=self.args.world_size,
            seed=self.args.seed,
            padded=not self.args.packing,
            by_modality=self.args.group_by_modality_length,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Four groups: (projector | rest) x (decay | no decay); the projector uses --mm_projector_lr when set."""
        if self.args.mm_projector_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, p in opt_model.named_parameters():
            if p.requires_grad:
                groups.setdefault(("mm_projector" in name, name in decay), []).append(p)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if is_decay else 0.0,
                **({"lr": self.args.mm_projector_lr} if is_proj else {}),
            }
            for (is_proj, is_decay), params in groups.items()
        ]
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **kwargs)
        return self.optimizer

    def _save_checkpoint(self, model, trial) -> None:
        # The full checkpoint (model, optimizer, RNG) keeps --resume_from_checkpoint exact; stage 1 also gets
        # LLaVA's mm_projector.bin in the checkpoint folder. A failed write (a full disk) names the folder.
        folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        with writing(folder):
            super()._save_checkpoint(model, trial)
        if self.tune_mm_mlp_adapter:  # on every rank: gathering ZeRO-3 shards is a collective
            save_mm_projector(self.model, folder, write=self.args.should_save)
