"""Builders and checkpoints: projector layouts, tower choice, and save -> load round trips (full, projector-only,
LoRA, and a checkpoint laid out like a released LLaVA-1.5 one) that must give identical logits."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from drip.checkpoint import save_drip
from drip.flash import flash_attn_kernels
from llava.model.builder import (
    checkpoint_kind,
    flash_attention_2_usable,
    load_pretrained_model,
    resolve_attn_implementation,
)
from llava.model.config import MultimodalConfig, PDropConfig
from llava.model.language_model.llava_llama import LlavaLlamaConfig, LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.multimodal_encoder.drip_encoder import DripVisionTower
from llava.model.multimodal_projector.builder import build_vision_projector


# --- projector and tower builders ----------------------------------------------------------------------------------
def test_projector_types_keep_llava_key_names():
    assert set(build_vision_projector("linear", 32, 64).state_dict()) == {"weight", "bias"}
    mlp2 = build_vision_projector("mlp2x_gelu", 32, 64)
    assert set(mlp2.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert isinstance(mlp2[1], torch.nn.GELU) and mlp2[0].in_features == 32 and mlp2[2].out_features == 64
    assert {k.split(".")[0] for k in build_vision_projector("mlp3x_gelu", 32, 64).state_dict()} == {"0", "2", "4"}
    x = torch.randn(5, 64)
    assert torch.equal(build_vision_projector("identity", 64, 64)(x), x)
    with pytest.raises(ValueError, match="unknown mm_projector_type 'mlp2x_relu'"):
        build_vision_projector("mlp2x_relu", 32, 64)
    with pytest.raises(ValueError, match="identity"):
        build_vision_projector("identity", 32, 64)


def test_tower_is_chosen_by_the_drip_prefix_only(tiny, tmp_path):
    clip_named_drip = MultimodalConfig(vision_tower=str(tmp_path / "drip-like-clip"), vision_tower_config=tiny.clip)
    assert isinstance(build_vision_tower(clip_named_drip), CLIPVisionTower)
    drip = MultimodalConfig(vision_tower="drip:DRIP-tiny")
    tower = build_vision_tower(drip, threshold=0.3)
    assert isinstance(tower, DripVisionTower) and tower.config.threshold == 0.3
    assert tower.hidden_size == 64 and tower.num_patches == 64 and tower.image_processor.crop_size["height"] == 64
    with pytest.raises(ValueError, match="neither a DRIP checkpoint directory nor a preset"):
        build_vision_tower(MultimodalConfig(vision_tower="drip:no-such-preset"))
    with pytest.raises(ValueError, match="mm_vision_tower is not set"):
        build_vision_tower(MultimodalConfig())


def test_image_processor_is_clip_at_the_tower_size(tiny):
    proc = tiny.model("clip").get_vision_tower().image_processor
    pixels = proc.preprocess([torch.zeros(3, 40, 50, dtype=torch.uint8)], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, :, 0, 0], -torch.tensor(proc.image_mean) / torch.tensor(proc.image_std))


def test_initialize_vision_modules_records_settings(tiny, tmp_path):
    model = tiny.model("none")
    stage1 = {"model.mm_projector.0.weight": torch.ones(64, 64), "model.mm_projector.0.bias": torch.zeros(64)}
    torch.save(
        {**stage1, "model.mm_projector.2.weight": torch.ones(64, 64) * 2, "model.mm_projector.2.bias": torch.zeros(64)},
        tmp_path / "p.bin",
    )

    class Args:
        vision_tower, mm_vision_select_layer, mm_projector_type = "drip:DRIP-tiny", -2, "mlp2x_gelu"
        pretrain_mm_mlp_adapter, drip_boundary_threshold = str(tmp_path / "p.bin"), 0.4

    model.get_model().initialize_vision_modules(Args)
    mm = MultimodalConfig.from_config(model.config)
    assert (mm.vision_tower, mm.mm_hidden_size, mm.projector_type) == ("drip:DRIP-tiny", 64, "mlp2x_gelu")
    assert mm.vision_tower_config["threshold"] == 0.4
    assert torch.equal(model.get_model().mm_projector[2].weight, torch.ones(64, 64) * 2)


def test_multimodal_config_reads_llava_keys_and_writes_them_back(tiny):
    config = tiny.config("clip", mm_vision_select_layer=-3, image_aspect_ratio="pad", tokenizer_model_max_length=128)
    mm = MultimodalConfig.from_config(config)
    assert (mm.select_layer, mm.image_aspect_ratio, mm.tokenizer_model_max_length) == (-3, "pad", 128)
    assert (mm.select_feature, mm.use_im_patch_token, mm.tokenizer_padding_side, mm.pdrop) == (
        "patch",
        True,
        "right",
        None,
    )
    mm = mm.replace(pdrop=PDropConfig((8, 16), (0.5, 0.25)))
    mm.write_to(config)
    assert config.pdrop_layer_list == [8, 16] and MultimodalConfig.from_config(config) == mm
    with pytest.raises(ValueError, match="non-increasing"):
        PDropConfig((1, 2), (0.25, 0.5))
    with pytest.raises(ValueError, match="mm_patch_merge_type 'spatial_unpad' is not supported"):
        MultimodalConfig.from_config(tiny.config("clip", mm_patch_merge_type="spatial_unpad"))


def test_training_keys_round_trip_under_llavas_names(tiny):
    config = tiny.config("clip")
    mm = MultimodalConfig.from_config(config).replace(tune_mm_mlp_adapter=True, projector_lr=2e-5)
    mm.write_to(config)
    assert (config.tune_mm_mlp_adapter, config.freeze_mm_mlp_adapter, config.mm_projector_lr) == (True, False, 2e-5)
    assert config.use_mm_proj is True and MultimodalConfig.from_config(config) == mm


def test_flat_mm_keys_are_written_by_multimodal_config_only():
    # One writer (MultimodalConfig.write_to): no other module of llava assigns a flat multimodal key.
    keys = r"(mm_\w+|use_mm_proj|image_aspect_ratio|tokenizer_padding_side|tokenizer_model_max_length|pdrop_\w+)"
    pattern = re.compile(r"\bconfig\." + keys + r"\s*=[^=]")
    root = Path(__file__).resolve().parents[2] / "llava"
    writers = [
        f"{path.relative_to(root)}:{n}"
        for path in root.rglob("*.py")
        if path.name != "config.py" or path.parent.name != "model"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert writers == []


def test_drip_tower_keeps_its_own_init_inside_the_model(tiny):
    # HF's generic init would zero the predictor's output bias; DRIP sets it to logit(prior) (0.25 -> -1.0986).
    predictor = tiny.model("drip").get_vision_tower().vision_tower.predictors[0]
    torch.testing.assert_close(predictor.fc2.bias, torch.logit(torch.tensor([0.25])))


# --- checkpoints ---------------------------------------------------------------------------------------------------
def _logits(model, tiny, tower="clip"):
    rows = [tiny.prompt(8, image_at=[2], seed=1), tiny.prompt(5, seed=2)]
    ids, mask = tiny.right_pad(rows)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, images=tiny.images(1, tower))
    return out.logits[
        torch.arange(out.logits.shape[1]) < torch.tensor([lay.seq_len for lay in out.image_layouts])[:, None]
    ]


def _save_tokenizer(tiny, path: Path) -> None:
    tiny.tokenizer().save_pretrained(path)


def _save_base_llm(tiny, model, path: Path) -> None:
    """The LLM alone as a plain Llama checkpoint (LLaVA's ``model_base``, e.g. Vicuna)."""
    llm = LlamaForCausalLM(LlamaConfig(**tiny.llama))
    llm_state = {k: v for k, v in model.state_dict().items() if "vision_tower" not in k and "mm_projector" not in k}
    llm.load_state_dict(llm_state, strict=True)
    llm.save_pretrained(path)
    _save_tokenizer(tiny, path)


def _clip_source(model, path: Path) -> str:
    model.get_vision_tower().vision_tower.save_pretrained(path)
    return str(path)


def test_full_round_trip_clip_and_drip(tiny, tmp_path):
    for tower in ("clip", "drip"):
        model = tiny.model(tower, drip={"threshold": 0.25})
        model.save_pretrained(tmp_path / tower)
        _save_tokenizer(tiny, tmp_path / tower)
        assert checkpoint_kind(str(tmp_path / tower)) == "full"
        tokenizer, loaded, processor, context = load_pretrained_model(str(tmp_path / tower))
        assert type(loaded).__name__ == "LlavaLlamaForCausalLM" and context == 256 and not loaded.training
        assert processor.crop_size["height"] == tiny.image_size(tower) and len(tokenizer) < 300
        assert torch.equal(_logits(loaded, tiny, tower), _logits(model, tiny, tower))
        auto = AutoModelForCausalLM.from_pretrained(tmp_path / tower)  # registered model_type llava_llama
        assert type(auto) is type(loaded) and AutoConfig.from_pretrained(tmp_path / tower).model_type == "llava_llama"


@pytest.mark.parametrize("tower", ["clip", "drip"])
def test_projector_only_round_trip(tiny, tmp_path, tower):
    model = tiny.model(tower)
    if tower == "clip":
        source = _clip_source(model, tmp_path / "clip")
    else:
        source = "drip:" + str(save_drip(model.get_vision_tower().vision_tower, tmp_path / "drip"))
    model.config.mm_vision_tower = source  # the tower's weights live at its source, not in the checkpoint
    _save_base_llm(tiny, model, tmp_path / "base")
    ckpt = tmp_path / "stage1"
    model.config.save_pretrained(ckpt)
    projector = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
    torch.save(projector, ckpt / "mm_projector.bin")
    assert checkpoint_kind(str(ckpt)) == "projector"
    _, loaded, _, _ = load_pretrained_model(str(ckpt), model_base=str(tmp_path / "base"))
    assert torch.equal(_logits(loaded, tiny, tower), _logits(model, tiny, tower))
    with pytest.raises(ValueError, match="pass model_base"):
        load_pretrained_model(str(ckpt))


def test_lora_round_trip_merges_adapter_and_non_lora_trainables(tiny, tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny.model("clip")
    model.config.mm_vision_tower = _clip_source(model, tmp_path / "clip")
    _save_base_llm(tiny, model, tmp_path / "base")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained-looking adapter and projector, so both must be loaded to match
        for name, p in lora.named_parameters():
            if "lora_B" in name or "mm_projector" in name:
                p.add_(torch.randn_like(p) * 0.05)
    lora.get_base_model().get_model().mm_projector.requires_grad_(True)
    reference = _logits(lora, tiny)
    ckpt = tmp_path / "lora"
    lora.save_pretrained(ckpt)
    model.config.save_pretrained(ckpt)
    trainables = {n: p.detach().clone() for n, p in lora.named_parameters() if p.requires_grad and "lora_" not in n}
    assert any(k.startswith("base_model.model.model.mm_projector.") for k in trainables)  # LLaVA's key layout
    torch.save(trainables, ckpt / "non_lora_trainables.bin")
    assert checkpoint_kind(str(ckpt)) == "lora"
    _, loaded, _, _ = load_pretrained_model(str(ckpt), model_base=str(tmp_path / "base"))
    assert type(loaded).__name__ == "LlavaLlamaForCausalLM"  # merged, not a PeftModel
    torch.testing.assert_close(_logits(loaded, tiny), reference, atol=1e-5, rtol=1e-5)


def _released_config(tiny, clip_dir: str) -> dict:
    """config.json as the released LLaVA-1.5 checkpoints have it (liuhaotian/llava-v1.5-7b's keys, tiny sizes):
    written before LLaVA renamed its model type, with transformers 4.31 era keys."""
    return {
        **tiny.llama,
        "_name_or_path": "./checkpoints/vicuna-7b-v1-5",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava",
        "hidden_act": "silu",
        "image_grid_pinpoints": None,
        "mm_resampler_type": None,
        "tune_mm_vision_resampler": False,
        "unfreeze_mm_vision_tower": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "use_cache": True,
        "mm_vision_tower": clip_dir,
        "mm_hidden_size": 32,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_patch_merge_type": "flat",
        "image_aspect_ratio": "pad",
        "use_mm_proj": True,
        "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "torch_dtype": "float16",
        "transformers_version": "4.31.0",
        "rope_scaling": None,
        "max_length": 4096,
    }


def test_released_llava_layout_loads(tiny, tmp_path):
    model = tiny.model("clip")
    clip_dir = _clip_source(model, tmp_path / "clip")
    full = tmp_path / "llava-v1.5-tiny"
    full.mkdir()
    # LLaVA's keys: CLIPVisionModel still had its `vision_model.` level then.
    state = {
        k.replace("vision_tower.vision_tower.", "vision_tower.vision_tower.vision_model."): v
        for k, v in model.state_dict().items()
    }
    assert "model.mm_projector.0.weight" in state and any(".vision_tower.vision_model.embeddings." in k for k in state)
    torch.save(state, full / "pytorch_model.bin")
    (full / "config.json").write_text(json.dumps(_released_config(tiny, clip_dir)))
    _save_tokenizer(tiny, full)
    _, loaded, processor, _ = load_pretrained_model(str(full))
    assert loaded.mm_config.image_aspect_ratio == "pad" and processor.crop_size["height"] == 32
    assert torch.equal(_logits(loaded, tiny), _logits(model, tiny))

    # The same checkpoint with our stored tower config: the tower weights now come from the checkpoint itself.
    with torch.no_grad():
        CLIPVisionModel.from_pretrained(clip_dir).save_pretrained(tmp_path / "other")
        other = CLIPVisionModel.from_pretrained(tmp_path / "other")
        for p in other.parameters():
            p.add_(1.0)
        other.save_pretrained(tmp_path / "other")
    config = {**_released_config(tiny, str(tmp_path / "other")), "mm_vision_tower_config": tiny.clip}
    (full / "config.json").write_text(json.dumps(config))
    _, loaded, _, _ = load_pretrained_model(str(full))
    assert torch.equal(_logits(loaded, tiny), _logits(model, tiny))


def test_released_projector_only_layout_loads(tiny, tmp_path):
    model = tiny.model("clip")
    clip_dir = _clip_source(model, tmp_path / "clip")
    _save_base_llm(tiny, model, tmp_path / "vicuna")
    stage1 = tmp_path / "llava-v1.5-tiny-pretrain"
    stage1.mkdir()
    (stage1 / "config.json").write_text(json.dumps(_released_config(tiny, clip_dir)))
    sd = model.get_model().mm_projector.state_dict()
    torch.save({f"model.mm_projector.{k}": v.half() for k, v in sd.items()}, stage1 / "mm_projector.bin")
    _, loaded, _, _ = load_pretrained_model(str(stage1), model_base=str(tmp_path / "vicuna"))
    torch.testing.assert_close(_logits(loaded, tiny), _logits(model, tiny), atol=1e-3, rtol=1e-3)  # fp16 weights


def _released_full(tiny, model, tmp_path: Path) -> Path:
    """A full checkpoint in the released layout: legacy config, one .bin, CLIP keys with `vision_model.`."""
    full = tmp_path / "llava-v1.5-tiny"
    full.mkdir()
    state = {
        k.replace("vision_tower.vision_tower.", "vision_tower.vision_tower.vision_model."): v
        for k, v in model.state_dict().items()
    }
    torch.save(state, full / "pytorch_model.bin")
    (full / "config.json").write_text(json.dumps(_released_config(tiny, _clip_source(model, tmp_path / "clip"))))
    _save_tokenizer(tiny, full)
    return full


def test_released_checkpoint_equals_one_saved_by_this_project(tiny, tmp_path, caplog):
    model = tiny.model("clip")
    released = _released_full(tiny, model, tmp_path)
    ours = tmp_path / "ours"
    model.save_pretrained(ours)
    _save_tokenizer(tiny, ours)
    with caplog.at_level(logging.WARNING):
        _, from_released, _, _ = load_pretrained_model(str(released))
    assert "You are using a model of type `llava`" not in caplog.text  # read as LLaVA's own layout, no guess
    _, from_ours, _, _ = load_pretrained_model(str(ours))
    assert from_released.config.model_type == "llava_llama"
    assert MultimodalConfig.from_config(from_released.config) == MultimodalConfig.from_config(
        LlavaLlamaConfig.from_pretrained(released)
    )
    assert torch.equal(_logits(from_released, tiny), _logits(from_ours, tiny))

    # The Auto classes: AutoConfig maps "llava" to transformers' own LlavaConfig, which this model refuses loudly.
    hf_config = AutoConfig.from_pretrained(released)
    assert type(hf_config).__name__ == "LlavaConfig"
    with pytest.raises(TypeError, match="needs a LlavaLlamaConfig"):
        LlavaLlamaForCausalLM.from_pretrained(released, config=hf_config)
    with pytest.raises(ValueError):
        AutoModelForCausalLM.from_pretrained(released)  # never a silently defaulted model
    config = LlavaLlamaConfig.from_pretrained(released)
    auto = AutoModelForCausalLM.from_pretrained(released, config=config, dtype=torch.float32)  # config says fp16
    assert type(auto) is LlavaLlamaForCausalLM
    assert torch.equal(_logits(auto.eval(), tiny), _logits(from_ours, tiny))


def test_transformers_own_llava_layout_is_refused(tiny, tmp_path):
    ckpt = tmp_path / "llava-1.5-7b-hf"
    ckpt.mkdir()
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": {"model_type": "llama"},
        "vision_config": {"model_type": "clip_vision_model"},
    }
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="transformers' own Llava layout.*LlavaForConditionalGeneration"):
        load_pretrained_model(str(ckpt))
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llava", "hidden_size": 64}))
    with pytest.raises(ValueError, match="not a LLaVA-1.5 checkpoint"):
        LlavaLlamaConfig.from_pretrained(ckpt)


def test_released_lora_layout_loads(tiny, tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny.model("clip")
    clip_dir = _clip_source(model, tmp_path / "clip")
    _save_base_llm(tiny, model, tmp_path / "vicuna")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # LLaVA's suffixes
    layers = [f"model.layers.{i}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}" for i in range(2) for t in targets]
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=layers))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name or "mm_projector" in name:
                p.add_(torch.randn_like(p) * 0.05)
    reference = _logits(lora, tiny)
    ckpt = tmp_path / "llava-v1.5-tiny-lora"
    lora.save_pretrained(ckpt)
    (ckpt / "config.json").write_text(json.dumps(_released_config(tiny, clip_dir)))
    sd = model.get_model().mm_projector.state_dict()
    projector = {f"base_model.model.model.mm_projector.{k}": v for k, v in sd.items()}
    torch.save(projector, ckpt / "non_lora_trainables.bin")
    _, loaded, _, _ = load_pretrained_model(str(ckpt), model_base=str(tmp_path / "vicuna"))
    assert type(loaded) is LlavaLlamaForCausalLM and loaded.config.model_type == "llava_llama"
    torch.testing.assert_close(_logits(loaded, tiny), reference, atol=1e-5, rtol=1e-5)


def test_empty_model_base_folder_is_named(tiny, tmp_path):
    ckpt = tmp_path / "stage1"
    tiny.config("clip").save_pretrained(ckpt)
    torch.save({}, ckpt / "mm_projector.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_base .*empty: a directory without config.json"):
        load_pretrained_model(str(ckpt), model_base=str(tmp_path / "empty"))


def test_checkpoint_kind_reads_files_not_names(tmp_path):
    ckpt = tmp_path / "llava-lora-projector"  # words in the name mean nothing
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="found none of"):
        checkpoint_kind(str(ckpt))
    (ckpt / "model.safetensors").write_bytes(b"")
    assert checkpoint_kind(str(ckpt)) == "full"
    (ckpt / "adapter_config.json").write_text("{}")
    assert checkpoint_kind(str(ckpt)) == "lora"


def test_attn_implementation_choice(caplog):
    assert resolve_attn_implementation("eager") == "eager"
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        resolve_attn_implementation("flash")
    if flash_attention_2_usable():
        assert resolve_attn_implementation("flash_attention_2") == "flash_attention_2"
        return
    with caplog.at_level(logging.WARNING):
        assert resolve_attn_implementation("flash_attention_2") == "sdpa"
    assert "llava-drip[flash]" in caplog.text


def _flash_attn_package(root, body: str) -> None:
    (root / "flash_attn").mkdir()
    (root / "flash_attn" / "__init__.py").write_text(body)


@pytest.mark.parametrize("imports", [False, True])
def test_flash_attention_2_is_chosen_by_the_real_import(tmp_path, monkeypatch, caplog, imports):
    """A flash_attn package that is found but fails to import (built for another torch) gives sdpa, even where
    transformers' own check (package metadata, CUDA) passes; one that imports gives flash_attention_2."""
    body = "flash_attn_func = flash_attn_varlen_func = None\n" if imports else "raise ImportError('undefined symbol')\n"
    _flash_attn_package(tmp_path, body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    flash_attn_kernels.cache_clear()
    try:
        assert resolve_attn_implementation("flash_attention_2") == "sdpa"  # on CPU transformers' check fails
        flash_attn_kernels.cache_clear()
        monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda: True)  # a CUDA machine
        with caplog.at_level(logging.WARNING):
            got = resolve_attn_implementation("flash_attention_2")
        assert got == ("flash_attention_2" if imports else "sdpa")
        assert ("does not import" in caplog.text) == (not imports)
    finally:
        sys.modules.pop("flash_attn", None)
        flash_attn_kernels.cache_clear()


def test_a_projector_of_another_tower_width_is_refused_naming_both_widths(tiny, tmp_path):
    """A stage-1 projector trained on 48-wide tower features for DRIP-tiny (64 wide): a clear refusal, not torch's
    size mismatch."""
    model = tiny.model("none")
    stage1 = {"model.mm_projector.0.weight": torch.ones(64, 48), "model.mm_projector.0.bias": torch.zeros(64)}
    stage1 |= {"model.mm_projector.2.weight": torch.ones(64, 64), "model.mm_projector.2.bias": torch.zeros(64)}
    torch.save(stage1, tmp_path / "p.bin")

    class Args:
        vision_tower, mm_vision_select_layer, mm_projector_type = "drip:DRIP-tiny", -2, "mlp2x_gelu"
        pretrain_mm_mlp_adapter = str(tmp_path / "p.bin")

    with pytest.raises(
        ValueError,
        match=r"p\.bin: the projector was trained on tower features of width 48, but the "
        r"vision tower .drip:DRIP-tiny. gives features of width 64",
    ):
        model.get_model().initialize_vision_modules(Args)


def test_a_config_without_a_tower_loads_as_text_only_and_says_so(tiny, tmp_path, caplog):
    model = tiny.model("none")
    model.save_pretrained(tmp_path / "text")
    _save_tokenizer(tiny, tmp_path / "text")
    with caplog.at_level("WARNING"):
        _, loaded, processor, _ = load_pretrained_model(str(tmp_path / "text"))
    assert processor is None and loaded.get_vision_tower() is None
    assert "config.json has no mm_vision_tower: loaded as a text-only model" in caplog.text
    from PIL import Image

    from llava.mm_utils import process_images

    with pytest.raises(ValueError, match="no vision tower .* no mm_vision_tower"):
        process_images([Image.new("RGB", (4, 4))], processor, loaded.config)


def test_a_projector_width_other_than_the_towers_is_refused_at_load(tiny, tmp_path):
    """config.json's mm_hidden_size (the projector's input) is 48, its CLIP tower gives 32: refused at load."""
    config = tiny.config("clip", mm_hidden_size=48)
    LlavaLlamaForCausalLM(config).save_pretrained(tmp_path / "odd")
    _save_tokenizer(tiny, tmp_path / "odd")
    with pytest.raises(ValueError, match=r"odd: the projector takes features of width 48 .*gives width 32"):
        load_pretrained_model(str(tmp_path / "odd"))


def test_a_truncated_weight_file_or_a_refused_pickle_is_named_at_load(tiny, tmp_path):
    model = tiny.model("clip")
    model.save_pretrained(tmp_path / "cut")
    _save_tokenizer(tiny, tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut: a weight file \(model\.safetensors\) is truncated or corrupt"):
        load_pretrained_model(str(tmp_path / "cut"))
    from pathlib import PurePosixPath  # any object beyond tensors and containers: unpickling it runs code

    torch.save({"model.mm_projector.0.weight": PurePosixPath("x")}, tmp_path / "mm_projector.bin")
    from llava.model.llava_arch import projector_weights

    with pytest.raises(ValueError, match=r"mm_projector\.bin: refused for safety") as caught:
        projector_weights(str(tmp_path / "mm_projector.bin"))
    assert "weights_only=False" not in str(caught.value)
