"""Draw a trained connector's segments on photos: one PNG per image, segment borders over the tower's input crop.

``python -m llava.tools.connector_overlay --model-path CKPT [--model-base BASE] --out DIR [--data DATA --first 4]
[--samples astronaut coffee chelsea rocket] [--images a.jpg ...]``

CKPT: a LLaVA checkpoint with a ``--mm_connector`` that segments the raster patches (the DRIP connector; fixed 1-D
runs too), e.g. a run of the real-image track (``llava_drip_demo.real_track``) with SmolLM2 as BASE. DATA: the
folder of LLaVA's 2k stage-1 sample (default ``$LLAVA_STAGE1_DATA``): ``--first N`` draws the first N of its 200
evaluation photos; ``--samples`` names scikit-image's bundled photos. Each PNG is named after its image and its
number of visual tokens, which ``DIR/overlays.json`` lists too. The drawing is the
connector's ``patch_boundaries`` drawn by ``drip.segments``, as the web demo draws them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava.eval.caption_rank import DATA_ENV, DATA_FILE, EVAL_RECORDS, read_captions
from llava.mm_utils import load_image, process_images, to_rgb

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # bundled with scikit-image: offline


def skimage_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photos, by its ``skimage.data`` name."""
    from skimage import data

    if not hasattr(data, name):
        raise ValueError(f"--samples: scikit-image has no bundled photo {name!r} (e.g. {', '.join(SKIMAGE_PHOTOS)})")
    return to_rgb(Image.fromarray(getattr(data, name)()))


@torch.no_grad()
def segment_overlay(model: Any, processor: Any, image: Image.Image) -> tuple[Image.Image, int]:
    """(``image`` cropped as the tower sees it with the connector's segment borders drawn, visual tokens).

    Raises:
        ValueError: the model has no connector, or one that does not segment the raster patches (2-D windows).
    """
    connector = getattr(model.get_model(), "mm_connector", None)
    if connector is None:
        raise ValueError("the checkpoint has no --mm_connector: nothing to draw")
    tower = model.get_vision_tower()
    pixels = process_images([image], processor, model.config).to(model.device, model.dtype)  # [1, 3, S, S]
    features = tower(pixels)
    boundaries = connector.patch_boundaries(features)  # [1, N]: the predictor runs once, for both answers
    if boundaries is None:
        raise ValueError(f"the connector {type(connector).__name__} does not segment the raster patches (2-D pooling)")
    shown = to_rgb(image).resize((tower.image_size, tower.image_size), Image.BICUBIC)
    return connector.draw_boundaries(boundaries[0], shown), int(connector.segment_tokens(boundaries)[0])


def named_images(args: argparse.Namespace) -> list[tuple[str, Image.Image]]:
    """(name, photo) for ``--first`` evaluation photos of DATA, ``--samples`` and ``--images``, in that order."""
    out = []
    if args.first:
        if not args.data:
            raise ValueError(f"--first needs --data (or ${DATA_ENV}): the folder of LLaVA's 2k stage-1 sample")
        items = read_captions(os.path.join(args.data, DATA_FILE))[-EVAL_RECORDS:][: args.first]
        out += [(f"eval-{i.record_id}", load_image(os.path.join(args.data, "images", i.image))) for i in items]
    out += [(f"skimage-{name}", skimage_photo(name)) for name in args.samples]
    out += [(Path(p).stem, load_image(p)) for p in args.images]
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", required=True, help="checkpoint with a segmenting --mm_connector")
    p.add_argument("--model-base", default=None, help="base LLM of a projector-only checkpoint")
    p.add_argument("--out", required=True, help="folder for the PNGs and overlays.json")
    p.add_argument("--data", default=os.environ.get(DATA_ENV), help=f"stage-1 data folder (default ${DATA_ENV})")
    p.add_argument("--first", type=int, default=0, help="draw the first N of the 200 evaluation photos")
    p.add_argument("--samples", nargs="*", default=list(SKIMAGE_PHOTOS), help="scikit-image photos (none: --samples)")
    p.add_argument("--images", nargs="*", default=[], help="more image files")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from llava.eval.command import load_model

    args = parse_args(argv)
    try:
        images = named_images(args)
        tokenizer, model, processor, _ = load_model(args.model_path, args.model_base, args.device)
        os.makedirs(args.out, exist_ok=True)
        listed = []
        for name, image in images:
            overlay, tokens = segment_overlay(model, processor, image)
            file = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{tokens}tok.png"
            overlay.save(os.path.join(args.out, file))
            listed.append({"image": name, "png": file, "visual_tokens": tokens})
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.out, "overlays.json").write_text(json.dumps(listed, indent=1) + "\n")
    print(f"{len(listed)} overlays -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
