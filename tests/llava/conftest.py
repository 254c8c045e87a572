"""One tiny-config tester shared by the LLaVA model tests: a random Llama (hidden 64, 2 layers, 4 heads, vocab 300),
a tiny HF CLIP vision tower or DRIP-tiny, a word-level tokenizer, and prompts with image placeholders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from drip import get_preset
from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.config import LLAVA_1_5_SELECT_LAYER
from llava.model.language_model.llava_llama import LlavaLlamaConfig, LlavaLlamaForCausalLM

VOCAB_SIZE = 300
HF_IMAGE_TOKEN_ID = VOCAB_SIZE - 1  # transformers' Llava needs a real vocabulary id for its placeholder
WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(60)]


class TinyLlavaTester:
    """Builds tiny configs, models and inputs; every test uses the same sizes."""

    hf_image_token_id = HF_IMAGE_TOKEN_ID

    llama = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    # 32x32 images, 8x8 patches: 16 visual tokens per image at layer -2 of 3.
    clip = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
        hidden_act="gelu",
    )
    drip_preset = "DRIP-tiny"  # 64x64 images, 8x8 patches: 1..64 tokens per image

    def config(
        self, tower: str = "clip", projector: str = "mlp2x_gelu", drip: dict[str, Any] | None = None, **mm: Any
    ) -> LlavaLlamaConfig:
        """tower: "clip" (source "tiny-clip", never read: the stored config builds it), "drip" (DRIP-tiny with
        ``drip`` overrides) or "none"; ``mm`` sets or overrides any other config key."""
        if tower == "clip":
            mm_keys = dict(mm_vision_tower="tiny-clip", mm_vision_tower_config=dict(self.clip), mm_hidden_size=32)
        elif tower == "drip":
            cfg = get_preset(self.drip_preset, **(drip or {}))
            mm_keys = dict(
                mm_vision_tower=f"drip:{self.drip_preset}", mm_vision_tower_config=cfg.to_dict(), mm_hidden_size=64
            )
        else:
            mm_keys = {}
        if tower != "none":
            mm_keys["mm_vision_select_layer"] = LLAVA_1_5_SELECT_LAYER  # as LLaVA-1.5's scripts pass (and ours)
        mm_keys.update(mm)
        return LlavaLlamaConfig(**self.llama, **mm_keys, mm_projector_type=projector)

    def model(self, tower: str = "clip", seed: int = 0, **kwargs: Any) -> LlavaLlamaForCausalLM:
        torch.manual_seed(seed)
        return LlavaLlamaForCausalLM(self.config(tower, **kwargs)).eval()

    def image_size(self, tower: str) -> int:
        return self.clip["image_size"] if tower == "clip" else get_preset(self.drip_preset).image_size

    def images(self, n: int, tower: str = "clip", seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        s = self.image_size(tower)
        return torch.randn(n, 3, s, s, generator=g)

    def prompt(self, length: int, image_at: Sequence[int] = (), seed: int = 0) -> torch.Tensor:
        """[length] ids: BOS then random words, IMAGE_TOKEN_INDEX at the given positions."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, len(WORDS), (length,), generator=g)
        ids[0] = 1
        for p in image_at:
            ids[p] = IMAGE_TOKEN_INDEX
        return ids

    @staticmethod
    def right_pad(rows: Sequence[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ids -> ([B, L] ids, [B, L] bool attention mask), padded on the right."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, True
        return ids, mask

    @staticmethod
    def tokenizer() -> PreTrainedTokenizerFast:
        """Whitespace word-level tokenizer over WORDS (ids < VOCAB_SIZE)."""
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
        )


@pytest.fixture(scope="session")
def tiny() -> TinyLlavaTester:
    return TinyLlavaTester()


@pytest.fixture(scope="session")
def save_tiny_base_llm():
    """A function (world dir, out dir) -> out dir: a tiny random Llama (hidden 64, 2 layers) saved with a BPE
    tokenizer trained on that demo world's text, like any HF base-LLM checkpoint (used by the training tests)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava_drip_demo.base_llm import demo_texts, train_tokenizer

    def save(world, out):
        tok = train_tokenizer(demo_texts(world, "v1"), vocab_size=400)
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            **ids,
        )
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
        return out

    return save


@pytest.fixture(scope="session")
def clip_dir_64(tmp_path_factory):
    """A tiny random HF ``CLIPVisionModel`` directory at the demo's image size (64 px, 8 px patches: an 8x8 grid)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out = tmp_path_factory.mktemp("clip64")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(**dict(TinyLlavaTester.clip, image_size=64))
    CLIPVisionModel(cfg).save_pretrained(out)
    return out
