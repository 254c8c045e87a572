"""A browser demo of LLaVA-DRIP: pick or upload an image, ask, watch the answer stream beside DRIP's segments.

    pip install -e '.[web]'
    python -m llava.serve.web --model-path CKPT [--model-base BASE] [--compare-model-path CKPT2 ...]

``answer_request`` is the per-request logic (prompt, decoding, segments, visual tokens, tower and prefill GMACs,
latency) as a plain function; ``build_demo`` wraps it in a gradio Blocks app; ``main`` loads the models and launches.
Prompting and decoding are ``llava.prompting``'s; GMACs are what the tower's (and connector's) features carry
(``VisionFeatures.macs``, as ``llava.eval.efficiency`` reports them) and ``llava.model.flops.prefill_macs``. gradio
is an optional extra, imported inside functions.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import TextIteratorStreamer

from llava.conversation import DEFAULT_CONV_MODE
from llava.mm_utils import process_images, to_rgb
from llava.model.flops import prefill_macs
from llava.prompting import Decoding, PromptStyle, cut_at_stop

SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")  # scikit-image's bundled photos (offline)


@dataclass
class LoadedModel:
    """One model the demo can answer with: what ``load_pretrained_model`` returns, under a display name."""

    name: str
    model: Any
    tokenizer: Any
    image_processor: Any
    conv_mode: str = DEFAULT_CONV_MODE


@dataclass
class DemoAnswer:
    """One request's outcome: the answer, the segment overlay (None for towers that do not pool) and its costs."""

    text: str
    segments: Image.Image | None
    visual_tokens: int
    tower_gflops: float  # GMACs of the tower (+ connector), multiply-adds (drip.cost's convention)
    prefill_gflops: float
    seconds: float

    def summary(self) -> str:
        return (
            f"visual tokens: {self.visual_tokens} | tower GMACs: {self.tower_gflops:.3f} | "
            f"prefill GMACs: {self.prefill_gflops:.3f} | latency: {self.seconds:.2f} s"
        )


def sample_image(name: str) -> Image.Image:
    """One of scikit-image's bundled photos by name (``SAMPLE_IMAGES``)."""
    from skimage import data

    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; known: {', '.join(SAMPLE_IMAGES)}")
    return to_rgb(Image.fromarray(getattr(data, name)()))


def tower_figures(model: Any, pixels: torch.Tensor, image: Image.Image) -> tuple[int, float, Any]:
    """(visual tokens, tower GMACs, segment overlay or None) of ``pixels`` [1, 3, S, S] from one tower call;
    the overlay is drawn on ``image`` resized to S x S, by towers that can draw their segments (DRIP)."""
    tower, connector = model.get_vision_tower(), getattr(model.get_model(), "mm_connector", None)
    with torch.no_grad():
        features = tower(pixels)
        pooled = features if connector is None else connector(features)  # --mm_connector: pooled after the tower
    gflops = float(pooled.require_macs(type(connector or tower).__name__)[0]) / 1e9  # the tower's (+ the connector's)
    size = tower.image_size
    shown = to_rgb(image).resize((size, size), Image.BICUBIC)
    if connector is not None:  # the connector's segments (DRIP connector, 1-D runs); 2-D windows draw none
        draw = getattr(connector, "draw_segments", None)
        overlay = draw(features, shown) if draw is not None else None
    else:
        draw = getattr(tower, "draw_segments", None)  # DRIP towers only
        overlay = draw(pixels, shown) if draw is not None else None
    return int(pooled.token_counts[0]), gflops, overlay


def answer_request(
    loaded: LoadedModel,
    image: Image.Image,
    question: str,
    decoding: Decoding,
    streamer: Any = None,
) -> DemoAnswer:
    """Answer ``question`` about ``image`` (one user turn); text also goes to ``streamer`` as it is decoded."""
    if not question.strip():
        raise ValueError("the question is empty")
    model, tokenizer = loaded.model, loaded.tokenizer
    style = PromptStyle(loaded.conv_mode, model.mm_config.use_im_start_end)
    stop = style.stop_string(tokenizer)
    input_ids = style.prompt_ids([style.user_turn(question, True)], tokenizer).unsqueeze(0)  # [1, L]
    pixels = process_images([image], loaded.image_processor, model.config)  # [1, 3, S, S]
    start = time.perf_counter()
    with torch.inference_mode():
        output_ids = model.generate(
            input_ids.to(model.device),
            images=pixels,
            image_sizes=[image.size],
            streamer=streamer,
            **decoding.generate_kwargs(tokenizer, stop),
        )
    seconds = time.perf_counter() - start
    text = cut_at_stop(tokenizer.decode(output_ids[0], skip_special_tokens=True), stop)
    tokens, tower_gflops, segments = tower_figures(model, pixels, image)
    text_tokens = input_ids.shape[1] - 1  # the image placeholder is replaced by the visual tokens
    return DemoAnswer(
        text=text,
        segments=segments,
        visual_tokens=tokens,
        tower_gflops=tower_gflops,
        prefill_gflops=prefill_macs(model.config, text_tokens, tokens) / 1e9,
        seconds=seconds,
    )


def stream_request(
    loaded: LoadedModel, image: Image.Image, question: str, decoding: Decoding
) -> Iterator[tuple[str, DemoAnswer | None]]:
    """(text so far, None) while decoding, then (answer, DemoAnswer): ``answer_request`` on a worker thread."""
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["answer"] = answer_request(loaded, image, question, decoding, streamer)
        except BaseException as err:  # re-raised on the caller's thread below
            result["error"] = err
            streamer.end()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text, None
    worker.join()
    if "error" in result:
        raise result["error"]
    yield result["answer"].text, result["answer"]


def _pick_image(upload: Any, sample: str) -> Image.Image:
    return to_rgb(upload) if upload is not None else sample_image(sample)


def respond(
    models: Sequence[LoadedModel],
    decoding: Decoding,
    request: tuple[Any, str, str, bool],
    user_error: Callable[[str], Exception],
) -> Iterator[list[Any]]:
    """The demo's outputs (answer, segments, summary per model) as they stream, for ``request`` = (upload or None,
    sample name, question, compare both models). Bad input (an empty or over-long question, an unreadable image)
    raises ``user_error(reason)``: the app passes ``gr.Error``, which shows the reason instead of a bare "Error"."""
    upload, sample, question, compare = request
    outputs: list[Any] = [None, None, ""] * len(models)
    try:
        image = _pick_image(upload, sample)
        for i, loaded in enumerate(models[: 2 if compare else 1]):
            for text, done in stream_request(loaded, image, question, decoding):
                outputs[3 * i] = text
                if done is not None:
                    outputs[3 * i + 1], outputs[3 * i + 2] = done.segments, done.summary()
                yield list(outputs)
    except (ValueError, OSError) as err:  # PromptTooLong is a ValueError; PIL's decoding errors are OSErrors
        raise user_error(str(err)) from None


def build_demo(models: Sequence[LoadedModel], decoding: Decoding) -> Any:
    """The gradio Blocks app over ``models`` (one, or two to compare on the same question)."""
    import gradio as gr

    if not models:
        raise ValueError("build_demo needs at least one model")

    def answer(upload: Any, sample: str, question: str, compare: bool) -> Iterator[list[Any]]:
        yield from respond(models, decoding, (upload, sample, question, compare), gr.Error)

    with gr.Blocks(title="LLaVA-DRIP") as demo:
        gr.Markdown("# LLaVA-DRIP\nAsk about an image; DRIP's segments and the costs appear beside the answer.")
        with gr.Row():
            # image_mode=None: gradio hands over the file's own mode (its default "RGB" clips 16-bit images)
            upload = gr.Image(type="pil", image_mode=None, label="image (upload, or leave empty for a sample)")
            sample = gr.Dropdown(list(SAMPLE_IMAGES), value=SAMPLE_IMAGES[0], label="sample photo")
        question = gr.Textbox(label="question", value="What is in this image?")
        compare = gr.Checkbox(value=len(models) > 1, label="compare both models", visible=len(models) > 1)
        ask = gr.Button("Ask")
        outs: list[Any] = []
        for i, loaded in enumerate(models):  # element ids answer-i, segments-i, summary-i (the browser test's)
            with gr.Row():
                outs.append(gr.Textbox(label=f"answer: {loaded.name}", elem_id=f"answer-{i}"))
                outs.append(gr.Image(type="pil", label=f"segments: {loaded.name}", elem_id=f"segments-{i}", height=320))
                outs.append(gr.Markdown(elem_id=f"summary-{i}"))
        ask.click(answer, [upload, sample, question, compare], outs, api_name="ask")
    return demo


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Browser demo of LLaVA-DRIP.")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--compare-model-path", default=None, help="a second checkpoint to compare on each question")
    parser.add_argument("--compare-model-base", default=None)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--conv-mode", default=DEFAULT_CONV_MODE)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = []
    for path, base in ((args.model_path, args.model_base), (args.compare_model_path, args.compare_model_base)):
        if path is None:
            continue
        name = get_model_name_from_path(path)
        tokenizer, model, processor, _ = load_pretrained_model(path, base, name, device=device)
        models.append(LoadedModel(name, model, tokenizer, processor, args.conv_mode))
    decoding = Decoding(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    build_demo(models, decoding).queue().launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
