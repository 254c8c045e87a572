"""llava.serve.web: the per-request function on a tiny saved LLaVA-DRIP checkpoint, streaming, and build_demo."""

import pytest

from llava.model.builder import load_pretrained_model
from llava.prompting import Decoding
from llava.serve.web import LoadedModel, answer_request, build_demo, sample_image, stream_request

from .test_eval_generation import build_checkpoint


@pytest.fixture(scope="module")
def loaded(tiny, tmp_path_factory) -> LoadedModel:
    path = build_checkpoint(tiny, tmp_path_factory.mktemp("web") / "llava-drip-tiny")
    tokenizer, model, processor, _ = load_pretrained_model(str(path), None, "llava-drip-tiny", device="cpu")
    return LoadedModel("tiny", model, tokenizer, processor)


def test_answer_request_reports_segments_and_costs(loaded):
    image = sample_image("astronaut")
    out = answer_request(loaded, image, "Describe object 1.", Decoding(temperature=0.0, max_new_tokens=5))
    size = loaded.model.get_vision_tower().image_size
    assert out.segments is not None and out.segments.size == (size, size)
    assert 1 <= out.visual_tokens <= 64  # DRIP-tiny: 8x8 patches pooled into at most 64 tokens
    assert out.tower_gflops is not None and out.tower_gflops > 0
    assert out.prefill_gflops > 0 and out.seconds > 0
    assert f"visual tokens: {out.visual_tokens}" in out.summary()


def test_stream_request_ends_with_the_full_answer(loaded):
    decoding = Decoding(temperature=0.0, max_new_tokens=5)
    steps = list(stream_request(loaded, sample_image("coffee"), "Describe object 1.", decoding))
    final_text, final = steps[-1]
    assert final is not None and final.text == final_text
    direct = answer_request(loaded, sample_image("coffee"), "Describe object 1.", decoding)
    assert direct.text == final.text  # greedy: the streamed run and a plain run agree


def test_answer_request_rejects_empty_question(loaded):
    with pytest.raises(ValueError, match="empty"):
        answer_request(loaded, sample_image("rocket"), "  ", Decoding(temperature=0.0, max_new_tokens=2))


def test_build_demo_constructs(loaded):
    gr = pytest.importorskip("gradio")
    demo = build_demo([loaded, loaded], Decoding(temperature=0.0, max_new_tokens=2))
    assert isinstance(demo, gr.Blocks)


class Shown(Exception):
    """Stands in for gr.Error (what the app passes): the reason the browser shows."""


@pytest.mark.parametrize(
    "question, reason",
    [("  ", "the question is empty"), ("red " * 1100, "longer than the model's context of 1024 tokens")],
)
def test_bad_input_is_shown_with_its_reason(loaded, question, reason):
    from llava.serve.web import respond

    request = (None, "astronaut", question, False)
    with pytest.raises(Shown, match=reason):
        list(respond([loaded], Decoding(temperature=0.0, max_new_tokens=2), request, Shown))


def test_an_unknown_sample_is_shown_with_its_reason(loaded):
    from llava.serve.web import respond

    request = (None, "nope", "What is it?", False)  # the API takes any sample name
    with pytest.raises(Shown, match="unknown sample image 'nope'"):
        list(respond([loaded], Decoding(temperature=0.0, max_new_tokens=2), request, Shown))
