"""Done-when for the DRIP connector on CPU: a LLaVA with an HF CLIP, SigLIP or DINOv2 tower (tiny, random) trains
stage 1 and stage 2 with ``--mm_connector``, saves every layout (stage-1 ``mm_projector.bin``, full, LoRA),
calibrates the eval threshold at the end of training (and by command), reloads, and answers with the same per-image
token counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.train.train import train
from tests.llava.tiny_runs import LORA

CONNECTOR = "drip:rate=0.25,estimator=box"


@pytest.fixture(scope="module")
def clip_dir(clip_dir_64) -> Path:
    return clip_dir_64


def args_for(run_args, world: Path, clip_dir: Path, out: Path, stage: int, *extra: str) -> list[str]:
    args = run_args(out, data=world / ("pretrain.json" if stage == 1 else "instruct.json"))
    args[args.index("--vision_tower") + 1] = str(clip_dir)
    if stage == 1:
        args[args.index("--version") + 1] = "plain"
        extra = ("--tune_mm_mlp_adapter", "True", *extra)
    return [
        *args,
        "--mm_connector",
        CONNECTOR,
        "--mm_vision_select_layer",
        "-2",
        "--max_steps",
        "2",
        "--save_strategy",
        "no",
        *extra,
    ]


def counts_and_logits(model, pixels: torch.Tensor, bos: int) -> tuple[list[int], torch.Tensor]:
    ids = torch.tensor([[bos, IMAGE_TOKEN_INDEX, 5, 6]] * len(pixels))
    with torch.no_grad():
        counts = model.encode_image_features(pixels).token_counts.tolist()
        return counts, model(input_ids=ids, images=pixels).logits


@pytest.fixture(scope="module")
def stage1(run_args, world, clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    return train(args_for(run_args, world, clip_dir, out, 1)), out


def test_stage1_trains_the_connector_saves_it_beside_the_projector_and_calibrates(stage1, base_llm):
    trainer, out = stage1
    connector = trainer.model.get_model().get_connector()
    assert connector.predictor.fc1.weight.requires_grad
    assert trainer.train_dataset.opts.expected_image_tokens == 16  # rate 0.25 x 64 patches, not the tower's 64
    assert not any(p.requires_grad for p in trainer.model.get_model().layers.parameters())  # LLM frozen
    saved = torch.load(out / "mm_projector.bin", weights_only=True)
    assert {k for k in saved if "mm_connector" in k} == {f"model.mm_connector.{k}" for k in connector.state_dict()}
    config = json.loads((out / "config.json").read_text())
    calibrated = connector.eval_threshold.item()
    assert config["mm_connector"] == f"drip:rate=0.25,estimator=box,tau=1.0,threshold={calibrated!r}"
    assert calibrated != 0.5  # calibrated at the end of training, not the default
    _, model, _, _ = load_pretrained_model(str(out), str(base_llm))
    pixels = torch.randn(3, 3, 64, 64)
    bos = trainer.processing_class.bos_token_id
    trained = counts_and_logits(trainer.model.eval(), pixels, bos)
    loaded = counts_and_logits(model, pixels, bos)
    assert loaded[0] == trained[0] and 1 <= min(trained[0])
    torch.testing.assert_close(loaded[1], trained[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["full", "lora"])
def test_stage2_from_the_stage1_file_saves_reloads_and_keeps_token_counts(
    stage1, run_args, world, clip_dir, base_llm, tmp_path, layout
):
    trainer1, out1 = stage1
    extra = LORA if layout == "lora" else ()
    adapter = str(out1 / "mm_projector.bin")
    out = tmp_path / layout
    trainer = train(args_for(run_args, world, clip_dir, out, 2, "--pretrain_mm_mlp_adapter", adapter, *extra))
    model = trainer.model.base_model.model if layout == "lora" else trainer.model
    stage1_fc1 = trainer1.model.get_model().get_connector().predictor.fc1.weight
    connector = model.get_model().get_connector()
    assert connector.predictor.fc1.weight.requires_grad and not torch.equal(connector.predictor.fc1.weight, stage1_fc1)
    if layout == "lora":
        saved = torch.load(out / "non_lora_trainables.bin", weights_only=True)
        assert any(".mm_connector.predictor." in k for k in saved)
        targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
        assert not any("mm_connector" in t for t in targets)
    _, loaded, _, _ = load_pretrained_model(str(out), str(base_llm) if layout == "lora" else None)
    pixels = torch.randn(3, 3, 64, 64)
    bos = trainer.processing_class.bos_token_id
    expected = counts_and_logits(trainer.model.eval(), pixels, bos)
    got = counts_and_logits(loaded, pixels, bos)
    assert got[0] == expected[0]
    torch.testing.assert_close(got[1], expected[1], atol=1e-4, rtol=1e-4)
    assert loaded.config.mm_connector == model.config.mm_connector  # the calibrated threshold travels in config.json


def test_a_released_llava_projector_file_loads_into_a_connector_model(run_args, world, clip_dir, tmp_path, caplog):
    """LLaVA-1.5's mm_projector.bin holds only model.mm_projector.* keys: the connector starts as initialised."""
    from transformers import LlamaConfig

    from llava.model.multimodal_projector.builder import build_vision_projector

    hidden = LlamaConfig.from_pretrained(run_args(tmp_path)[1]).hidden_size
    projector = build_vision_projector("mlp2x_gelu", 32, hidden)
    torch.save({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()}, tmp_path / "llava.bin")
    args = args_for(
        run_args,
        world,
        clip_dir,
        tmp_path / "out",
        2,
        "--pretrain_mm_mlp_adapter",
        str(tmp_path / "llava.bin"),
        "--learning_rate",
        "0",
    )
    trainer = train(args)
    torch.testing.assert_close(trainer.model.get_model().mm_projector[0].weight, projector[0].weight)
    assert "holds no connector weights" in caplog.text


def test_calibrate_command_rewrites_the_recorded_threshold(stage1, base_llm, world, tmp_path):
    import shutil

    from llava.tools.calibrate_connector import main

    _, out1 = stage1
    ckpt = tmp_path / "ckpt"
    shutil.copytree(out1, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["mm_connector"] = "drip:rate=0.25,estimator=box,tau=1.0,threshold=0.5"
    (ckpt / "config.json").write_text(json.dumps(config))
    main(["--model-path", str(ckpt), "--model-base", str(base_llm), "--images", str(world / "images"), "--count", "8"])
    recorded = json.loads((ckpt / "config.json").read_text())["mm_connector"]
    assert recorded.startswith("drip:rate=0.25,estimator=box,tau=1.0,threshold=") and not recorded.endswith("=0.5")


# --- the HF SigLIP / DINOv2 towers: the same connector, no CLS (SigLIP) or CLS dropped / kept (DINOv2) ------------
@pytest.fixture(scope="module", params=["siglip", "dinov2"])
def hf_tower_dir(request, tmp_path_factory) -> tuple[str, Path]:
    """A tiny random SigLIP or DINOv2 vision model at 64 px with 8 px patches (an 8x8 grid)."""
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=64, patch_size=8)
    out = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    if request.param == "siglip":
        SiglipVisionModel(SiglipVisionConfig(**common, intermediate_size=64)).save_pretrained(out)
    else:
        Dinov2Model(Dinov2Config(**common, mlp_ratio=2)).save_pretrained(out)
    return request.param, out


def test_stage1_and_stage2_with_siglip_and_dinov2_towers(hf_tower_dir, run_args, world, base_llm, tmp_path):
    family, tower_dir = hf_tower_dir
    extra = ("--mm_vision_select_feature", "cls_patch") if family == "dinov2" else ()  # DINOv2 keeps its CLS
    stage1 = train(args_for(run_args, world, tower_dir, tmp_path / "s1", 1, *extra))
    adapter = ("--pretrain_mm_mlp_adapter", str(tmp_path / "s1" / "mm_projector.bin"))
    trainer = train(args_for(run_args, world, tower_dir, tmp_path / "s2", 2, *adapter, *extra))
    assert stage1.model.get_model().get_connector().has_cls == (family == "dinov2")
    _, loaded, _, _ = load_pretrained_model(str(tmp_path / "s2"))
    pixels = torch.randn(3, 3, 64, 64)
    bos = trainer.processing_class.bos_token_id
    expected = counts_and_logits(trainer.model.eval(), pixels, bos)
    got = counts_and_logits(loaded, pixels, bos)
    assert got[0] == expected[0] and all(1 + (family == "dinov2") <= c <= 64 + (family == "dinov2") for c in got[0])
    torch.testing.assert_close(got[1], expected[1], atol=1e-4, rtol=1e-4)
