"""Fast-CLIP on the demo world: no pooling (ViT-tiny) vs image pooling (DRIP-tiny) vs image + text (DRIP-tiny-T2x).

Generates a small demo world (``python -m llava_drip_demo.demo_world``), trains each CLIP with
``python -m drip.tools.train`` for
the same epochs, batch and learning rate (the demo's settings), evaluates zero-shot top-1 / top-5 with
``python -m drip.tools.zero_shot`` on the world's zero-shot split, and counts the text tower's analytic GMACs per
caption (``drip.flops.text_tower_macs``) on the training captions: open_clip's tower runs every context position,
DRIP's text tower only the tokens up to end-of-text and, with pooling, the segments it keeps after its pre-layer.

    python benchmarks/text_pooling_clip.py --out runs/text_pooling [--epochs 4] [--n-clip 480]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

from drip.flops import text_tower_macs
from drip.text.clip import create_model
from drip.text.model import DripTextConfig, text_preset
from drip.text.weights import drip_text_tower, text_weights

MODELS = ("ViT-tiny", "DRIP-tiny", "DRIP-tiny-T2x")


def _py(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True)


def text_gmacs(name: str, checkpoint: Path, captions: list[str]) -> tuple[float, float | None]:
    """(GMACs per caption, mean segments per caption or None) of the model's text tower on ``captions``."""
    import open_clip

    model = create_model(name, pretrained=str(checkpoint) if text_preset(name) else None)  # weights: only for T2x
    tokens = open_clip.get_tokenizer(name)(captions)
    tower = drip_text_tower(model)
    if tower is None:  # open_clip's TextTransformer: every context position, no pooling
        cfg = DripTextConfig(**{**text_weights(model)[1], "pool_at": 0})
        return text_tower_macs(cfg, [tokens.shape[1]] * len(captions)) / 1e9, None
    with torch.no_grad():
        out = tower.eval().forward_features(tokens)
    lengths, counts = out.lengths.tolist(), out.token_counts.tolist()
    return text_tower_macs(tower.cfg, lengths, counts) / 1e9, sum(counts) / len(counts)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/text_pooling")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--n-clip", type=int, default=480)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    data = out / "world"
    _py(
        "-m",
        "llava_drip_demo.demo_world",
        "--out",
        str(data),
        "--clip-absolute-paths",
        "--seed",
        str(args.seed),
        "--n-pretrain",
        "8",
        "--n-instruct",
        "8",
        "--n-sqa",
        "4",
        "--n-bench",
        "2",
        "--n-clip",
        str(args.n_clip),
        "--n-zeroshot-per-class",
        "4",
    )
    with open(data / "clip_captions.csv") as f:
        captions = [row["title"] for row in csv.DictReader(f, delimiter="\t")]
    rows = []
    for name in MODELS:
        _py(
            "-m",
            "drip.tools.train",
            "--model",
            name,
            "--train-data",
            str(data / "clip_captions.csv"),
            "--dataset-type",
            "csv",
            "--csv-img-key",
            "filepath",
            "--csv-caption-key",
            "title",
            "--csv-separator",
            "\t",
            "--batch-size",
            "64",
            "--epochs",
            str(args.epochs),
            "--lr",
            "2e-3",
            "--wd",
            "0.1",
            "--warmup",
            "20",
            "--workers",
            "0",
            "--seed",
            str(args.seed),
            "--logs",
            str(out / "clip"),
            "--name",
            name,
            "--precision",
            "fp32",
            "--drip-temperature-final",
            "0.3",
            "--save-frequency",
            str(args.epochs),
            "--log-every-n-steps",
            "100",
        )
        ckpt = out / "clip" / name / "checkpoints" / f"epoch_{args.epochs}.pt"
        zs = out / "clip" / name / "zero_shot.json"
        _py(
            "-m",
            "drip.tools.zero_shot",
            "--model",
            name,
            "--checkpoint",
            str(ckpt),
            "--data",
            str(data / "zeroshot"),
            "--classnames",
            str(data / "zeroshot" / "classnames.txt"),
            "--templates",
            str(data / "zeroshot" / "templates.txt"),
            "--json",
            str(zs),
        )
        result = json.loads(zs.read_text())
        gmacs, segments = text_gmacs(name, ckpt, captions)
        rows.append(
            {
                "model": name,
                "top1": result["top1"],
                "top5": result["top5"],
                "tokens_per_image": result.get("tokens_per_image"),
                "text_gmacs": gmacs,
                "text_segments": segments,
            }
        )
    print(f"{'model':<15}{'top-1':>7}{'top-5':>7}{'img tok':>8}{'text seg':>9}{'text GMACs':>11}")
    for r in rows:
        img = "-" if r["tokens_per_image"] is None else f"{r['tokens_per_image']:.1f}"
        seg = "-" if r["text_segments"] is None else f"{r['text_segments']:.1f}"
        print(f"{r['model']:<15}{r['top1']:>7.3f}{r['top5']:>7.3f}{img:>8}{seg:>9}{r['text_gmacs']:>11.5f}")
    (out / "text_pooling.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
