"""Fast-CLIP's pooled text tower: parity with open_clip's encode_text, causality, upcycling, loss, FLOPs, training."""

import json

import open_clip
import pytest
import torch

from drip.flops import fvcore_analysis, text_tower_macs
from drip.open_clip_integration import CONFIG_DIR, DripLoss, register_open_clip, upcycle_clip
from drip.text.clip import create_clip, create_model
from drip.text.model import DripTextConfig, DripTextTransformer, list_text_presets, text_preset
from drip.text.weights import drip_text_tower, upcycle_text
from drip.tools.train import epoch_metrics, make_optimizer, parse_drip_args

CAPTIONS = ["a photo of a red square", "two", "a big blue circle on the left of a small cat"]


def _tokens(name: str = "DRIP-tiny-T2x") -> torch.Tensor:
    register_open_clip()
    return open_clip.get_tokenizer(name)(CAPTIONS)


@pytest.mark.parametrize("name", list_text_presets())
def test_pooled_text_open_clip_configs_are_their_image_presets_with_a_custom_text_tower(name):
    cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    assert cfg.pop("custom_text") is True
    base = [p for p in CONFIG_DIR.glob("*.json") if json.loads(p.read_text()) == cfg]
    assert base and base[0].stem in name  # e.g. DRIP-tiny-T2x = DRIP-tiny + a pooled text tower
    fields = DripTextConfig.from_dict({**cfg["text_cfg"], **text_preset(name)})
    assert 0 < fields.pool_at < fields.layers


def test_presets_are_listed_and_validated():
    assert {"DRIP-tiny-T2x", "DRIP-4x-B-16-T2x"} <= set(list_text_presets())
    assert text_preset("DRIP-tiny") is None and text_preset("DRIP-tiny-T2x")["prior"] == 0.5
    with pytest.raises(ValueError, match="unknown text-tower keys"):
        DripTextConfig.from_dict({"pool_at": 1, "priors": 0.5})
    with pytest.raises(ValueError, match="pool_at"):
        DripTextConfig(layers=2, pool_at=2)


@pytest.mark.parametrize("source", ["clip", "custom_text", "file"])
def test_every_token_a_boundary_matches_open_clip_encode_text(source, tmp_path):
    register_open_clip()
    base = open_clip.create_model("ViT-tiny", force_custom_text=source == "custom_text").eval()
    if source == "file":
        torch.save({"state_dict": base.state_dict()}, tmp_path / "clip.pt")
    tower = upcycle_text(tmp_path / "clip.pt" if source == "file" else base, pool_at=1, heads=4).eval()
    text = _tokens()
    lengths = text.argmax(-1) + 1
    with torch.no_grad():
        ref = base.encode_text(text)
        out = tower.forward_features(text, boundaries=torch.ones(3, int(lengths.max())))
        plain = upcycle_text(base, pool_at=0, heads=4).eval()(text)  # no predictor: open_clip's tower
    torch.testing.assert_close(out.text_embeds, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=1e-5)
    assert out.token_counts.tolist() == lengths.tolist()


def test_a_segment_uses_no_later_token_and_the_embedding_reads_the_eot_segment():
    torch.manual_seed(0)
    tower = DripTextTransformer(
        DripTextConfig(
            context_length=32, vocab_size=100, width=32, heads=4, layers=3, embed_dim=16, pool_at=1, predictor_hidden=8
        )
    ).eval()
    text = torch.zeros(2, 32, dtype=torch.long)
    text[:, :12] = torch.randint(1, 90, (2, 12))
    text[:, 11] = 99  # EOT (the largest id) at position 11
    b = torch.zeros(2, 12)
    b[:, [2, 5, 8]] = 1  # segments [0..2] [3..5] [6..8] [9..11]
    changed = text.clone()
    changed[:, 7] = (text[:, 7] % 89) + 1  # a token inside the third segment
    changed[:, 20:] = 50  # padding after EOT
    with torch.no_grad():
        a, c = tower.forward_features(text, b), tower.forward_features(changed, b)
    torch.testing.assert_close(a.tokens[:, :2], c.tokens[:, :2])  # segments ending before position 7: unchanged
    assert (a.tokens[:, 2] - c.tokens[:, 2]).abs().max() > 1e-4  # the segment holding it: changed
    assert a.token_counts.tolist() == [4, 4]
    # the embedding is the EOT (last) segment's token, already after ln_final, times the projection
    torch.testing.assert_close(a.text_embeds, a.tokens[:, 3] @ tower.text_projection)


def test_create_model_builds_a_pooled_text_tower_and_loads_its_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("DRIP-tiny-T2x").eval()
    tower = drip_text_tower(model)
    assert isinstance(tower, DripTextTransformer) and tower.cfg.pool_at == 1 and tower.cfg.prior == 0.5
    assert drip_text_tower(open_clip.create_model("DRIP-tiny")) is None
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    again, _, _, tokenizer = create_clip("DRIP-tiny-T2x", tmp_path / "ckpt.pt")  # what drip.zero_shot builds
    with torch.no_grad():
        torch.testing.assert_close(again.eval().encode_text(tokenizer(CAPTIONS)), model.encode_text(_tokens()))
    with pytest.raises(ValueError, match="no pretrained weights ship"):
        create_model("DRIP-tiny-T2x", pretrained="openai")


def test_upcycle_clip_fills_both_pooled_towers_from_an_open_clip_clip():
    register_open_clip()
    base = open_clip.create_model("ViT-tiny").eval()
    model = create_model("DRIP-tiny-T2x").eval()
    assert upcycle_clip(model, base) == ["vision", "text"]
    text = _tokens()
    with torch.no_grad():
        out = drip_text_tower(model).forward_features(text, boundaries=torch.ones(3, int(text.argmax(-1).max()) + 1))
        torch.testing.assert_close(out.text_embeds, base.encode_text(text), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.logit_scale, base.logit_scale)


def test_drip_loss_logs_both_towers_boundary_losses_and_the_text_one_reaches_its_predictor():
    model = create_model("DRIP-tiny-T2x", output_dict=True).train()
    loss = DripLoss(open_clip.ClipLoss(), model, boundary_loss_weight=2.0)
    losses = loss(**model(torch.randn(3, 3, 64, 64), _tokens()), output_dict=True)
    assert set(losses) == {"contrastive_loss", "boundary_loss", "text_boundary_loss"}
    text = drip_text_tower(model)
    torch.testing.assert_close(losses["text_boundary_loss"], 2.0 * text.last.boundary_loss)
    losses["text_boundary_loss"].backward()
    assert text.predictors[0].fc2.weight.grad.abs().sum() > 0
    stats = loss.take_stats()
    assert stats.shape == (7,) and 0 < stats[6] <= 1


def test_text_tower_macs_match_fvcore():
    torch.manual_seed(0)
    cfg = DripTextConfig(
        context_length=32, vocab_size=100, width=32, heads=4, layers=3, embed_dim=16, pool_at=1, predictor_hidden=8
    )
    tower = DripTextTransformer(cfg).eval()
    text = torch.zeros(1, 32, dtype=torch.long)
    text[0, :10] = torch.arange(1, 11)
    text[0, 9] = 99
    b = torch.zeros(1, 10)
    b[0, [1, 4, 6]] = 1  # 4 segments (EOT closes the last)

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = tower

        def forward(self, t):
            return self.tower.forward_features(t, b).text_embeds

    with torch.no_grad():
        counted = fvcore_analysis(Traced(), (text,)).total()
    assert counted == pytest.approx(text_tower_macs(cfg, [10], [4]), rel=0.02)
    plain = cfg.replace(pool_at=0)
    assert text_tower_macs(plain, [32]) > text_tower_macs(plain, [10]) > text_tower_macs(cfg, [10], [4])


def _caption_batches(n: int = 16):
    """Eight noisy solid colours, one caption each (as tests/drip/test_train.py): learnable in a few steps."""
    colors = {
        "black": (0, 0, 0),
        "blue": (0, 0, 255),
        "green": (0, 255, 0),
        "cyan": (0, 255, 255),
        "red": (255, 0, 0),
        "magenta": (255, 0, 255),
        "yellow": (255, 255, 0),
        "white": (255, 255, 255),
    }
    names = list(colors)
    g = torch.Generator().manual_seed(0)
    rgb = torch.tensor([colors[names[i % 8]] for i in range(n)], dtype=torch.float32) / 127.5 - 1
    images = rgb[:, :, None, None] + 0.3 * torch.randn(n, 3, 64, 64, generator=g)
    texts = open_clip.get_tokenizer("DRIP-tiny-T2x")([f"a photo of the colour {names[i % 8]}" for i in range(n)])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, texts), batch_size=8, shuffle=True, drop_last=True
    )
    loader.num_batches, loader.num_samples = len(loader), n

    class Data:
        dataloader = loader

        def set_epoch(self, epoch: int) -> None:
            pass

    return {"train": Data()}


def test_train_one_epoch_with_a_pooled_text_tower_lowers_the_loss_and_holds_the_rate():
    from open_clip_train.distributed import init_distributed_device
    from open_clip_train.params import parse_args
    from open_clip_train.scheduler import const_lr
    from open_clip_train.train import train_one_epoch

    _, rest = parse_drip_args(["--model", "DRIP-tiny-T2x", "--batch-size", "8", "--lr", "2e-3", "--warmup", "1"])
    args = parse_args(rest + ["--epochs", "6", "--device", "cpu", "--log-every-n-steps", "100"])
    init_distributed_device(args)
    args.distill, args.wandb = False, False
    torch.manual_seed(0)
    model, data = create_model("DRIP-tiny-T2x", output_dict=True), _caption_batches()
    optimizer = make_optimizer(model, args)
    steps = data["train"].dataloader.num_batches
    schedule = const_lr(optimizer, args.lr, 0, steps * args.epochs)
    loss = DripLoss(open_clip.ClipLoss(), model)
    history = []
    for epoch in range(args.epochs):
        train_one_epoch(model, data, loss, epoch, optimizer, None, schedule, None, args)
        history.append(epoch_metrics(loss, args, torch.device("cpu"), 1.0, steps))
    assert history[-1]["task_loss"] < history[0]["task_loss"] - 0.5, [h["task_loss"] for h in history]
    for h in history:
        assert abs(h["text_boundary_rate"] - 0.5) < 0.15 and h["text_boundary_loss"] > 0, history
        assert 0 < h["boundary_rate"] <= 1
