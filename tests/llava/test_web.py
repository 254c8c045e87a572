"""llava.serve.web: the per-request function on a tiny saved LLaVA-DRIP checkpoint, streaming, and build_demo."""

import pytest

from llava.model.builder import load_pretrained_model
from llava.prompting import Decoding
from llava.serve.web import LoadedModel, answer_request, build_demo, respond, sample_image, stream_request

from .test_eval_generation import build_checkpoint

QUESTION = "Describe object 1."


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


class Shown(Exception):
    """Stands in for gr.Error (what the app passes): the reason the browser shows."""


@pytest.mark.parametrize(
    "question, reason",
    [("  ", "the question is empty"), ("red " * 1100, "longer than the model's context of 1024 tokens")],
)
def test_bad_input_is_shown_with_its_reason(loaded, question, reason):
    request = (None, "astronaut", question, False)
    with pytest.raises(Shown, match=reason):
        list(respond([loaded], Decoding(temperature=0.0, max_new_tokens=2), request, Shown))


def test_an_unknown_sample_is_shown_with_its_reason(loaded):
    request = (None, "nope", "What is it?", False)  # the API takes any sample name
    with pytest.raises(Shown, match="unknown sample image 'nope'"):
        list(respond([loaded], Decoding(temperature=0.0, max_new_tokens=2), request, Shown))


def test_respond_answers_with_the_asked_models_on_the_chosen_image(loaded):
    decoding = Decoding(temperature=0.0, max_new_tokens=3)
    astronaut = answer_request(loaded, sample_image("astronaut"), QUESTION, decoding)
    coffee = answer_request(loaded, sample_image("coffee"), QUESTION, decoding)
    both = list(respond([loaded, loaded], decoding, (None, "astronaut", QUESTION, True), Shown))
    final = both[-1]  # [answer, segments, summary] per model
    assert len(final) == 6 and final[0] == final[3] == astronaut.text
    assert final[1].tobytes() == final[4].tobytes() == astronaut.segments.tobytes()
    assert f"visual tokens: {astronaut.visual_tokens}" in final[2] and final[2].split("|")[0] == final[5].split("|")[0]
    assert both[0][3:] == [None, None, ""]  # the second model streams after the first
    solo = list(respond([loaded, loaded], decoding, (sample_image("coffee"), "astronaut", QUESTION, False), Shown))[-1]
    assert solo[0] == coffee.text and solo[1].tobytes() == coffee.segments.tobytes()  # the upload wins
    assert solo[1].tobytes() != astronaut.segments.tobytes()
    assert solo[3:] == [None, None, ""]  # not compared: the second model is not asked


def test_build_demo_wires_the_ask_button_to_respond(loaded):
    pytest.importorskip("gradio")
    decoding = Decoding(temperature=0.0, max_new_tokens=2)
    demo = build_demo([loaded, loaded], decoding)
    ask = next(f for f in demo.fns.values() if f.api_name == "ask")
    assert len(ask.inputs) == 4 and len(ask.outputs) == 6  # image, sample, question, compare -> 3 per model
    streamed = list(ask.fn(None, "astronaut", QUESTION, True))
    direct = list(respond([loaded, loaded], decoding, (None, "astronaut", QUESTION, True), Shown))
    assert [s[0::3] for s in streamed] == [d[0::3] for d in direct]  # the same answers, streamed the same way
    with pytest.raises(ValueError, match="at least one model"):
        build_demo([], decoding)
