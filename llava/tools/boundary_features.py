"""Cache a frozen HF vision tower's patch features on LLaVA's stage-1 photos, for the boundary measures of
``drip.tools.boundary_content`` (which then never runs the tower again).

``python -m llava.tools.boundary_features --tower TOWER_DIR --out /tmp/feats.pt [--data DATA] [--layer -2]``

TOWER_DIR: any HF ``Dinov2Model`` / ``SiglipVisionModel`` folder with its ``preprocessor_config.json``, e.g. the
DINOv2-S/14 conversion of ``python -m llava_drip_demo.dinov2_small --out TOWER_DIR --image-size 224``. DATA: the
folder of LLaVA's 2k stage-1 sample (``blip_laion_cc_sbu_2k.json`` + ``images/``), default ``$LLAVA_STAGE1_DATA``;
it is read, never copied. The output (fp16, outside git) holds ``features`` [M, N, D] (the selected layer's patch
tokens, no [CLS]; 256 per image at 224 px with a /14 tower), the record ids, captions and ``train`` (bool [M]: the
first M - 200 records train, the last 200 evaluate, the split of ``llava.eval.caption_rank``;
``--train-records K`` keeps only the first K training records).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import torch
from PIL import Image

from drip.images import load_image
from llava.eval.caption_rank import DATA_ENV, DATA_FILE, EVAL_RECORDS, read_captions
from llava.model.config import LLAVA_1_5_SELECT_LAYER


def _load_tower(path: str):
    from transformers import AutoImageProcessor, AutoModel

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"--tower {path}: no config.json (an HF vision tower folder)")
    model = AutoModel.from_pretrained(path).eval()
    return getattr(model, "vision_model", model), AutoImageProcessor.from_pretrained(path)


@torch.no_grad()
def patch_features(tower, processor, images: list[Image.Image], layer: int) -> torch.Tensor:
    """[B] PIL images -> [B, N, D] fp32 patch tokens of hidden layer ``layer`` (a leading [CLS] dropped if present)."""
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    hidden = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]  # [B, 1? + N, D]
    side = pixels.shape[-1] // tower.config.patch_size
    return hidden[:, hidden.shape[1] - side * side :]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tower", required=True, help="HF vision tower folder")
    ap.add_argument("--data", default=os.environ.get(DATA_ENV), help=f"stage-1 data folder (default ${DATA_ENV})")
    ap.add_argument("--out", required=True, help="output .pt file (fp16 features)")
    ap.add_argument("--layer", type=int, default=LLAVA_1_5_SELECT_LAYER, help="hidden layer (LLaVA-1.5's)")
    ap.add_argument("--train-records", type=int, default=None, help="first N training records only (default all)")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    if not args.data:
        ap.error(f"--data is required when ${DATA_ENV} is unset")
    records = read_captions(os.path.join(args.data, DATA_FILE))
    n_eval = min(EVAL_RECORDS, len(records) // 10)
    records = records[: len(records) - n_eval][: args.train_records] + records[len(records) - n_eval :]
    tower, processor = _load_tower(args.tower)
    start, chunks = time.time(), []
    for i in range(0, len(records), args.batch):
        part = records[i : i + args.batch]
        imgs = [load_image(os.path.join(args.data, "images", r.image)) for r in part]
        chunks.append(patch_features(tower, processor, imgs, args.layer).half())
        print(f"[boundary_features] {i + len(part)}/{len(records)} images, {time.time() - start:.0f} s", flush=True)
    feats = torch.cat(chunks)
    train = torch.arange(len(records)) < len(records) - n_eval
    torch.save(
        {
            "features": feats,
            "ids": [r.record_id for r in records],
            "captions": [r.caption for r in records],
            "train": train,
            "tower": args.tower,
            "layer": args.layer,
        },
        args.out,
    )
    print(f"[boundary_features] {list(feats.shape)} -> {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
