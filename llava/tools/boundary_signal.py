"""Does DRIP's boundary predictor get a task signal from LLaVA's LM loss? Estimator gradient vs finite differences.

    python -m llava.tools.boundary_signal --data-path D/instruct.json --image-folder D/images \\
        --base-llm BASE_LLM_DIR --vision-tower drip:DRIP-tiny --seeds 0 1 2
    python -m llava.tools.boundary_signal --data-path ... --image-folder ... --model-path LLAVA_CHECKPOINT

``drip.tools.boundary_signal`` does this for CLIP's contrastive loss; here the loss is the LM loss through the
tower (``llava.tools.lm_row_loss``): a batch of image + conversation records, tokenised as training tokenises them
(``LazySupervisedDataset``), boundaries drawn at the tower's prior rate and forced, every boundary of every image
flipped one at a time (all flips batched), and each estimator's linear prediction ``grad_b * (1 - 2 b)`` compared
with the true change of the sample's LM loss (sign agreement, Spearman, sign agreement by position). The model is a
LLaVA checkpoint (``--model-path``) or, with ``--base-llm``, a base LLM with ``--vision-tower`` and a fresh
``--mm-projector-type`` projector (seeded), as stage 1 starts. Each seed draws its own records and boundaries.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoTokenizer

from drip.tools.flip_signal import RowLoss, SignalReport, prior_boundaries, signal_report
from llava.model.builder import load_pretrained_model
from llava.model.config import LLAVA_1_5_SELECT_LAYER
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.drip_encoder import DripVisionTower
from llava.tools.lm_row_loss import lm_row_loss
from llava.train.args import ModelArguments
from llava.train.data import DataCollatorForSupervisedDataset, DatasetOptions, LazySupervisedDataset

ESTIMATORS = ("straight_through", "local")  # drip.boundary_estimators.BOUNDARY_ESTIMATORS


def build_model(args: argparse.Namespace, seed: int) -> tuple[Any, Any]:
    """(tokenizer, LLaVA model in eval mode, fp32, CPU) from ``--model-path`` or ``--base-llm`` + tower."""
    if args.model_path:
        tokenizer, model, _, _ = load_pretrained_model(args.model_path, args.model_base, device="cpu")
        return tokenizer, model.float().eval()
    tokenizer = AutoTokenizer.from_pretrained(args.base_llm, padding_side="right", model_max_length=args.max_length)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    torch.manual_seed(seed)
    model = LlavaLlamaForCausalLM.from_pretrained(args.base_llm, dtype=torch.float32)
    margs = ModelArguments(
        model_name_or_path=args.base_llm,
        version=args.version,
        vision_tower=args.vision_tower,
        mm_vision_select_layer=LLAVA_1_5_SELECT_LAYER,
        mm_projector_type=args.mm_projector_type,
        mm_use_im_patch_token=False,
    )
    model.get_model().initialize_vision_modules(model_args=margs)
    return tokenizer, model.eval()


def _with_autograd(model: Any) -> Any:
    """A tower without trainable parameters runs under no_grad (``encode_image_features``), which would cut the
    gradient of the forced boundaries; the predictor's requires_grad keeps the tower on the autograd graph."""
    model.get_vision_tower().set_trainable("predictor")
    return model


def measure_boundary_signal(
    tower: DripVisionTower, loss_rows: RowLoss, batch: int, estimator: str, generator: torch.Generator, chunk: int = 64
) -> SignalReport:
    """``drip.tools.flip_signal`` on ``loss_rows`` (``lm_row_loss``) through LLaVA's DRIP ``tower``: random boundaries
    at the prior rate for ``batch`` images, ``estimator``'s gradient vs the finite difference of every flip."""
    if not isinstance(tower, DripVisionTower):
        raise ValueError(f"the boundary signal needs a DRIP tower (drip:<preset|dir>), got {tower.vision_tower_name!r}")
    drip_vit = tower.vision_tower  # the DripVisionTransformer inside the LLaVA tower
    drip_vit.set_boundary_estimator(estimator)
    b, flippable = prior_boundaries(drip_vit, batch, generator)
    return signal_report(loss_rows, b.to(tower.device), flippable.to(tower.device), chunk)


def image_batch(dataset: LazySupervisedDataset, tokenizer: Any, size: int, seed: int) -> dict[str, Any]:
    """``size`` records with an image, drawn with ``seed``, collated as training collates them."""
    with_image = [i for i, r in enumerate(dataset.records) if "image" in r]
    if len(with_image) < size:
        raise ValueError(f"--data-path has {len(with_image)} records with an image; --batch asks for {size}")
    picked = random.Random(seed).sample(with_image, size)
    return DataCollatorForSupervisedDataset(tokenizer)([dataset[i] for i in picked])


def run(args: argparse.Namespace) -> list[tuple[str, int, Any]]:
    """One report per (estimator, seed)."""
    reports = []
    for seed in args.seeds:
        tokenizer, model = build_model(args, seed)
        tower = _with_autograd(model).get_vision_tower()
        opts = DatasetOptions(
            version=args.version,
            image_folder=args.image_folder,
            image_aspect_ratio=args.image_aspect_ratio,
            model_max_length=args.max_length,
            image_token_budget=tower.num_patches,
            mm_use_im_start_end=model.mm_config.use_im_start_end,
        )
        batch = image_batch(
            LazySupervisedDataset(args.data_path, tokenizer, tower.image_processor, opts), tokenizer, args.batch, seed
        )
        loss_rows = lm_row_loss(model, batch)
        for est in args.estimators:
            gen = torch.Generator().manual_seed(seed)  # the same boundaries for every estimator
            reports.append((est, seed, measure_boundary_signal(tower, loss_rows, args.batch, est, gen, args.chunk)))
    return reports


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m llava.tools.boundary_signal", description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", required=True, help="LLaVA JSON list of conversation records (with images)")
    ap.add_argument("--image-folder", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-path", help="a LLaVA checkpoint with a DRIP tower")
    src.add_argument("--base-llm", help="an HF Llama directory: built with --vision-tower and a fresh projector")
    ap.add_argument("--model-base", help="base LLM of a projector-only / LoRA --model-path")
    ap.add_argument("--vision-tower", default="drip:DRIP-tiny", help="with --base-llm: drip:<preset|checkpoint dir>")
    ap.add_argument("--mm-projector-type", default="mlp2x_gelu")
    ap.add_argument("--version", default="v1", help="conversation template the records are tokenised with")
    ap.add_argument("--image-aspect-ratio", default="pad", choices=("pad", "square"))
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=8, help="images per seed (every boundary of each is flipped)")
    ap.add_argument("--chunk", type=int, default=64, help="flipped copies per LLaVA forward")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[tuple[str, int, Any]]:
    args = parse_args(argv)
    reports = run(args)
    print("estimator        seed  sign   spearman  sign by position (early -> late)   flips")
    for est in args.estimators:
        rows = [(s, r) for e, s, r in reports if e == est]
        for s, r in rows:
            pos = " ".join(f"{v:.2f}" for v in r.by_position)
            print(f"{est:<16} {s:>4}  {r.sign_agreement:.3f}  {r.spearman:+.3f}    {pos}   {r.flips}")
        sign = sum(r.sign_agreement for _, r in rows) / len(rows)
        rho = sum(r.spearman for _, r in rows) / len(rows)
        print(f"{est:<16} mean  {sign:.3f}  {rho:+.3f}")
    return reports


if __name__ == "__main__":
    main()
