"""drip.tools.zero_shot: exact top-1/top-5 on a controlled model, prompt files, checkpoints, DRIP token
statistics, CLI."""

import json
import math

import open_clip
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from drip import DripVisionTransformer, get_preset
from drip.open_clip_integration import load_weights
from drip.tools.files import image_folder
from drip.tools.stats import DripTokenStats
from drip.tools.zero_shot import check_classes, evaluate_zero_shot, load_templates, resolve_prompts, topk_correct


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    """Tiny ops: a second intra-op thread only adds barrier waits on the shared 2-core machine (~20x slower)."""
    torch.set_num_threads(1)


WORDS = ["red", "green", "blue", "cat", "dog", "car", "tree", "house"]  # each one CLIP BPE token


class AngleCLIP(nn.Module):
    """A model with known embeddings on the unit circle (8 classes -> 8 angles, 45 degrees apart).

    encode_image: an image's mean pixel value g in [0, 1) -> angle 2*pi*g. encode_text: the angle of the class word
    found among the prompt's tokens. So an image of grey level (k + o)/8 sits o steps from class k.
    """

    def __init__(self, tokenizer, words):
        super().__init__()
        ids = [int(tokenizer([w])[0, 1]) for w in words]  # the token after <start_of_text>
        self.angle_of = {i: 2 * math.pi * k / len(words) for k, i in enumerate(ids)}

    def encode_image(self, images):
        theta = 2 * math.pi * images.mean(dim=(1, 2, 3))  # [B]
        return torch.stack([theta.cos(), theta.sin()], dim=-1)  # [B, 2]

    def encode_text(self, tokens, normalize=False):
        theta = torch.tensor([next(self.angle_of[int(t)] for t in row if int(t) in self.angle_of) for row in tokens])
        return torch.stack([theta.cos(), theta.sin()], dim=-1)


def grey_folder(root, offsets):
    """ROOT/<k>_<word>/<i>.png, solid grey (k + offset)/8 (mod 1) images; offsets: {class k: [offset, ...]}."""
    for k, offs in offsets.items():
        d = root / f"{k}_{WORDS[k]}"
        d.mkdir(parents=True)
        for i, o in enumerate(offs):
            v = round(255 * (((k + o) / len(WORDS)) % 1.0))
            Image.new("RGB", (8, 8), (v, v, v)).save(d / f"{i}.png")
    return root


def test_exact_top1_top5_on_controlled_model(tmp_path):
    # Offset 0.1: nearest class is the true one. 2.1: true class is 5th nearest (0.1, 0.9, 1.1, 1.9, 2.1 steps).
    # 3.1: true class is 7th (outside the top 5).
    offsets = {k: [0.1] for k in range(8)}
    for k in range(4):
        offsets[k].append(2.1)
    for k in (4, 5):
        offsets[k].append(3.1)
    data = image_folder(grey_folder(tmp_path / "zs", offsets), T.ToTensor())
    tok = open_clip.get_tokenizer("ViT-B-32")
    model = AngleCLIP(tok, WORDS)
    res = evaluate_zero_shot(model, tok, DataLoader(data, batch_size=3), WORDS, ["a photo of a {}.", "a {}"])
    flat = [o for offs in offsets.values() for o in offs]
    assert res["num_images"] == len(flat) == 14
    assert res["top1"] == pytest.approx(sum(o < 1 for o in flat) / len(flat))  # 8/14
    assert res["top5"] == pytest.approx(sum(o < 3 for o in flat) / len(flat))  # 12/14
    assert res["topk"] == 5 and res["num_classes"] == 8
    assert res["tokens_per_image"] is None and res["boundary_rate"] is None  # no DRIP tower inside


def test_topk_correct_clips_k_to_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.1]])
    assert topk_correct(logits, torch.tensor([1, 2, 2]), 2) == (1, 2)
    assert topk_correct(logits, torch.tensor([1, 2, 2]), 5) == (1, 3)  # top-5 of 3 classes: always right


def test_templates_and_classnames_files(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("a photo of a {}.\n\n  a {} on a table  \n")
    assert load_templates(good) == ["a photo of a {}.", "a {} on a table"]
    for i, bad in enumerate(["a photo of a cat.", "a {} and a {}", "a {0} photo", "a {name}", "a { photo {}"]):
        f = tmp_path / f"bad{i}.txt"
        f.write_text(f"a {{}} photo\n{bad}\n")
        with pytest.raises(ValueError, match=rf"{f.name}, line 2: .*exactly one '\{{\}}'"):
            load_templates(f)
    with pytest.raises(FileNotFoundError, match="templates file not found: .*missing.txt"):
        load_templates(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        resolve_prompts(str(tmp_path / "empty.txt"), "openai")
    with pytest.raises(FileNotFoundError, match="class-names file not found"):
        resolve_prompts(str(tmp_path / "nope.txt"), "simple")
    names, temps = resolve_prompts(None, "openai")  # open_clip's shipped ImageNet metadata
    assert names == list(open_clip.IMAGENET_CLASSNAMES) and len(names) == 1000
    assert temps == list(open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert resolve_prompts(None, "simple")[1] == list(open_clip.SIMPLE_IMAGENET_TEMPLATES)


def test_class_count_mismatch_and_missing_folder(tmp_path):
    data = image_folder(grey_folder(tmp_path / "zs", {0: [0.1], 1: [0.1]}), T.ToTensor())
    with pytest.raises(ValueError, match="gives 3 class names but .* has 2 class folders"):
        check_classes(data, ["a", "b", "c"], "names.txt")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        image_folder(tmp_path / "nothing", T.ToTensor())


def tiny_clip(visual: nn.Module | None = None) -> open_clip.CLIP:
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    if visual is not None:
        model.visual = visual
    return model


@pytest.mark.parametrize("wrap", ["plain", "open_clip_train"])
def test_load_weights_formats(tmp_path, wrap):
    src, dst = tiny_clip(), tiny_clip()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    sd = src.state_dict()
    blob = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}} if wrap != "plain" else sd
    torch.save(blob, tmp_path / "ckpt.pt")
    load_weights(dst, tmp_path / "ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))
    # A model that is not an open_clip CLIP loads through the plain path.
    lin = nn.Linear(3, 2)
    torch.save({"state_dict": {"module.weight": torch.ones(2, 3), "module.bias": torch.zeros(2)}}, tmp_path / "l.pt")
    load_weights(lin, tmp_path / "l.pt")
    assert torch.equal(lin.weight, torch.ones(2, 3))
    with pytest.raises(
        ValueError, match=r"l.pt does not fit .*\n  shape mismatches \(1\): weight: expected \(2, 4\), got \(2, 3\)"
    ):
        load_weights(nn.Linear(4, 2), tmp_path / "l.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_weights(lin, tmp_path / "none.pt")


class DripAdapter(nn.Module):
    """Minimal image tower over DRIP for an open_clip CLIP: images -> image_embeds."""

    def __init__(self, tower: DripVisionTransformer):
        super().__init__()
        self.tower = tower

    def forward(self, images):
        return self.tower(images).image_embeds


@pytest.mark.parametrize("bias,tokens", [(10.0, 64), (-10.0, 1)])
def test_drip_token_stats(tmp_path, bias, tokens):
    tower = DripVisionTransformer(get_preset("DRIP-tiny", embed_dim=32))
    with torch.no_grad():  # every patch a boundary (bias +10) or only the forced last one (bias -10)
        tower.predictors[0].fc2.weight.zero_()
        tower.predictors[0].fc2.bias.fill_(bias)
    model = tiny_clip(DripAdapter(tower))
    root = grey_folder(tmp_path / "zs", {0: [0.1, 0.2], 1: [0.1]})
    data = image_folder(root, T.Compose([T.Resize(64), T.ToTensor()]))
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=16)
    res = evaluate_zero_shot(model, tok, DataLoader(data, batch_size=2), WORDS[:2], ["a {}"])
    assert res["num_images"] == 3 and 0 <= res["top1"] <= 1
    assert res["tokens_per_image"] == tokens
    assert res["boundary_rate"] == pytest.approx(tokens / 64)
    with DripTokenStats(model) as stats:  # the hook is removed on exit
        model.encode_image(torch.zeros(1, 3, 64, 64))
    model.encode_image(torch.zeros(1, 3, 64, 64))
    assert stats.images == 1 and stats.last.token_counts.tolist() == [tokens]


def test_cli_loads_checkpoint_and_writes_json(tmp_path):
    from drip.text.clip import create_clip
    from drip.tools.zero_shot import main

    root = grey_folder(tmp_path / "zs", {0: [0.1, 0.3], 1: [0.1], 2: [0.2]})
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\na {} thing\n")
    model, _, preprocess, tok = create_clip("DRIP-tiny")
    tower = model.visual.trunk.tower
    with torch.no_grad():  # every patch a boundary: 64 tokens per image, which a fresh model would not give
        tower.predictors[0].fc2.weight.zero_()
        tower.predictors[0].fc2.bias.fill_(10.0)
    ckpt = {"epoch": 1, "name": "t", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(ckpt, tmp_path / "epoch_1.pt")
    flags = ["--data", str(root), "--classnames", str(tmp_path / "names.txt")]
    flags += ["--templates", str(tmp_path / "templates.txt"), "--batch-size", "3"]
    out = tmp_path / "run" / "zero_shot.json"
    res = main(["--model", "DRIP-tiny", "--checkpoint", str(tmp_path / "epoch_1.pt"), *flags, "--json", str(out)])
    assert json.loads(out.read_text()) == res
    assert res["model"] == "DRIP-tiny" and res["num_images"] == 4 and res["topk"] == 3 and res["top5"] == 1.0
    assert res["tokens_per_image"] == 64 and res["boundary_rate"] == 1.0
    data = image_folder(root, preprocess)
    names, temps = ["red", "green", "blue"], ["a photo of a {}.", "a {} thing"]
    direct = evaluate_zero_shot(model, tok, DataLoader(data, batch_size=4), names, temps)
    assert direct["top1"] == res["top1"]
    plain = main(["--model", "ViT-tiny", *flags])  # plain open_clip ViT: no DRIP statistics
    assert plain["tokens_per_image"] is None and plain["checkpoint"] is None
    with pytest.raises(ValueError, match="gives 1000 class names but .* has 3 class folders"):
        main(["--model", "ViT-tiny", "--data", str(root)])  # ImageNet names by default


def test_cli_boundary_modes_keep_the_learned_token_count(tmp_path):
    from drip.text.clip import create_clip
    from drip.tools.zero_shot import main

    root = grey_folder(tmp_path / "zs", {0: [0.1, 0.3], 1: [0.1], 2: [0.2]})
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    torch.manual_seed(0)
    model, _, _, _ = create_clip("DRIP-tiny")
    with torch.no_grad():  # logits that vary with the patch: about half the patches fire at threshold 0.5
        model.visual.trunk.tower.predictors[0].fc2.bias.zero_()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    flags = ["--model", "DRIP-tiny", "--checkpoint", str(tmp_path / "w.pt"), "--data", str(root)]
    flags += ["--classnames", str(tmp_path / "names.txt"), "--templates", "simple", "--drip-threshold", "0.5"]
    learned = main(flags)
    assert 1 < learned["tokens_per_image"] < 64 and learned["drip_boundary_mode"] == "learned"
    for mode in ("uniform", "random"):
        res = main([*flags, "--drip-boundary-mode", mode, "--drip-boundary-seed", "3"])
        assert res["tokens_per_image"] == pytest.approx(learned["tokens_per_image"])
        assert res["drip_boundary_mode"] == mode and res["drip_boundary_seed"] == 3
