"""Multimodal helpers around the model: prompt tokenisation with image placeholders, image loading and
preprocessing, and a keyword stopping criterion for generation.

Interfaces and semantics follow LLaVA's ``llava/mm_utils.py`` (Liu et al., "Improved Baselines with Visual
Instruction Tuning", 2023), so LLaVA's training and evaluation code paths carry over. LLaVA's "anyres" tiling
(LLaVA-NeXT) is not part of LLaVA-1.5 and is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase, StoppingCriteria

from drip.images import load_image as load_image  # re-exported: the project's one image loader
from drip.images import to_rgb
from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX, AspectRatio, check_aspect_ratio


class ImageProcessor(Protocol):
    """What ``process_images`` needs from an image processor (HF ``CLIPImageProcessor`` satisfies it)."""

    image_mean: Sequence[float]  # per-channel mean in [0, 1]

    def preprocess(self, images: Any, return_tensors: str) -> Any:  # returns a mapping with "pixel_values"
        ...


def tokenizer_image_token(
    prompt: str,
    tokenizer: PreTrainedTokenizerBase,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
    add_special_tokens: bool = True,
) -> list[int] | torch.Tensor:
    """Tokenise ``prompt``, mapping each ``<image>`` to ``image_token_index``.

    The text between placeholders is tokenised chunk by chunk, as LLaVA does, so no placeholder ever merges with its
    neighbours. The tokenizer's special tokens (e.g. Llama's BOS) are kept once, from the first chunk: the later chunks
    are tokenised without them. For tokenizers that prepend BOS this is LLaVA's output exactly; unlike LLaVA, a
    tokenizer that adds no BOS keeps every token even when the prompt starts with the BOS text (ChatML's
    ``<|im_start|>`` is SmolLM2's BOS; LLaVA would drop the first token after each image there).

    ``add_special_tokens=False`` tokenises a later piece of a prompt (no BOS at all).

    Returns:
        list of ids, or a LongTensor [L] when ``return_tensors == "pt"``.
    """
    chunks = prompt.split(DEFAULT_IMAGE_TOKEN)
    input_ids = list(tokenizer(chunks[0], add_special_tokens=add_special_tokens).input_ids)
    for chunk in chunks[1:]:
        input_ids.append(image_token_index)
        input_ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported tensor type: {return_tensors!r} (use None or 'pt')")


def expand2square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad ``image`` to a square of side max(width, height), centred on ``background_color`` (LLaVA-1.5's "pad")."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background_color)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def process_images(
    images: Sequence[Image.Image],
    image_processor: ImageProcessor,
    model_cfg: Any = None,
    *,
    aspect_ratio: AspectRatio | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Preprocess PIL images for the vision tower.

    ``aspect_ratio="pad"`` (LLaVA-1.5's setting) first pads each image to a square with the processor's mean colour,
    so the model sees the whole image uncropped; ``"square"`` hands the images to the processor as they are. Give
    either ``aspect_ratio`` or, as LLaVA's callers do, a model config whose ``image_aspect_ratio`` is read (unset
    means ``"square"``).

    Returns:
        pixel values [B, 3, H, W]; a list of [3, H_i, W_i] if padded images come out with different sizes.
    """
    if image_processor is None:  # what load_pretrained_model returns for a model without a tower
        raise ValueError(
            "no image processor: the model has no vision tower (its config.json has no "
            "mm_vision_tower), so it takes no images"
        )
    if aspect_ratio is None:
        if model_cfg is None:
            raise TypeError("process_images needs aspect_ratio='pad'|'square' or a model config (model_cfg)")
        aspect_ratio = getattr(model_cfg, "image_aspect_ratio", None) or "square"
    elif model_cfg is not None:
        raise TypeError("process_images takes aspect_ratio or model_cfg, not both")
    if check_aspect_ratio(aspect_ratio) == "square":
        return image_processor.preprocess([to_rgb(image) for image in images], return_tensors="pt")["pixel_values"]
    background = tuple(int(channel * 255) for channel in image_processor.image_mean)
    pixels = []
    for image in images:
        square = expand2square(to_rgb(image), background)
        pixels.append(image_processor.preprocess(square, return_tensors="pt")["pixel_values"][0])
    if pixels and all(p.shape == pixels[0].shape for p in pixels):
        return torch.stack(pixels, dim=0)
    return pixels


def get_model_name_from_path(model_path: str) -> str:
    """The last path component; for ``.../run/checkpoint-N`` it is ``run_checkpoint-N`` (LLaVA's naming)."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop each sequence once its generated text ends with (or contains, near its end) one of ``keywords``.

    Works row by row, as transformers 5.x expects: ``__call__`` returns a BoolTensor [B], so finished rows stop while
    the others go on (LLaVA's version stopped only when every row was done).

    Args:
        keywords: stop strings, e.g. the template's ``sep2`` ("</s>") or "<|im_end|>".
        tokenizer: used to find each keyword's ids and to decode the last generated tokens.
        input_ids: the prompt ids [B, L_prompt] when generation starts from ``input_ids`` (its output then begins with
            the prompt, which is not searched). Leave it out when generating from ``inputs_embeds``, where the ids
            generate hands to stopping criteria hold generated tokens only.
    """

    def __init__(
        self, keywords: Sequence[str], tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor | None = None
    ) -> None:
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = [self._ids_of(keyword) for keyword in self.keywords]
        self.max_keyword_len = max((len(ids) for ids in self.keyword_ids), default=0)
        self.start_len = 0 if input_ids is None else input_ids.shape[1]

    def _ids_of(self, keyword: str) -> torch.Tensor:
        ids = list(self.tokenizer(keyword).input_ids)
        if len(ids) > 1 and ids[0] == self.tokenizer.bos_token_id:
            ids = ids[1:]
        return torch.tensor(ids, dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        """input_ids [B, L] -> done [B] (True where that row produced a keyword)."""
        done = [self._row_done(row[self.start_len :]) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _row_done(self, generated: torch.Tensor) -> bool:
        for ids in self.keyword_ids:
            n = ids.shape[0]
            if 0 < n <= generated.shape[0] and torch.equal(generated[-n:].cpu(), ids):
                return True
        window = min(generated.shape[0], self.max_keyword_len)
        if window == 0:
            return False
        text = self.tokenizer.decode(generated[-window:].tolist(), skip_special_tokens=True)
        return any(keyword in text for keyword in self.keywords)
