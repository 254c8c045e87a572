"""llava.serve.web driven by a real headless Chromium (Debian's, through playwright): the page loads, the browser
picks a bundled photo, types a question and clicks Ask; the streamed answer, the summary (visual tokens, GMACs) and
the segment image appear, and a screenshot of the answered page is written (docs/web_demo.png when
WEB_DEMO_SCREENSHOT names it). WEB_DEMO_MODEL=CKPT answers with that checkpoint instead of the tiny test one.
Slow; skipped when chromium, playwright or gradio is absent.

    WEB_DEMO_MODEL=CKPT WEB_DEMO_SCREENSHOT=docs/web_demo.png \\
        .venv/bin/python -m pytest -m slow -q tests/llava/test_web_browser.py
"""

import os
import shutil
from pathlib import Path

import pytest

from llava.prompting import Decoding
from llava.serve.web import LoadedModel, build_demo

from .test_web import loaded  # noqa: F401  (the tiny checkpoint fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # Debian: /usr/bin/chromium
PHOTO = "chelsea"  # not the dropdown's default, so the pick is exercised
QUESTION = "What shapes are in the image?"  # the CPU demo model is trained on synthetic shapes


@pytest.fixture(scope="module")
def demo_model(request) -> LoadedModel:
    """The checkpoint WEB_DEMO_MODEL names (e.g. the demo's trained llava-drip), else the tiny test checkpoint."""
    path = os.environ.get("WEB_DEMO_MODEL")
    if not path:
        return request.getfixturevalue("loaded")
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    name = get_model_name_from_path(path)
    tokenizer, model, processor, _ = load_pretrained_model(path, None, name, device="cpu")
    return LoadedModel(name, model, tokenizer, processor)


def _ask_in_browser(page, shot: Path) -> tuple[str, str, int]:
    """Pick PHOTO, type QUESTION, click Ask; (answer text, summary text, segment image's natural width) once the
    summary has arrived (it is set with the last streamed step), after writing the full-page screenshot."""
    page.get_by_label("question").wait_for()
    page.get_by_label("sample photo").click()
    page.get_by_role("option", name=PHOTO).click()
    page.get_by_label("question").fill(QUESTION)
    page.get_by_role("button", name="Ask").click()
    page.locator("#summary-0").get_by_text("visual tokens:").wait_for(timeout=120_000)
    segments = page.locator("#segments-0 img").first
    segments.wait_for()
    page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=segments.element_handle())
    page.screenshot(path=str(shot), full_page=True)
    answer = page.locator("#answer-0 textarea").input_value()
    return answer, page.locator("#summary-0").inner_text(), segments.evaluate("e => e.naturalWidth")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_web_demo_answers_in_headless_chromium(demo_model, tmp_path):
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api")

    demo = build_demo([demo_model], Decoding(temperature=0.0, max_new_tokens=24))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    shot = Path(os.environ.get("WEB_DEMO_SCREENSHOT", tmp_path / "web_demo.png"))
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(demo.local_url)
                sync_api.expect(page).to_have_title("LLaVA-DRIP")  # gradio's app rendered (it sets the title)
                answer, summary, width = _ask_in_browser(page, shot)
            finally:
                browser.close()
    finally:
        demo.close()
    assert answer.strip(), "the streamed answer is empty"
    assert "visual tokens:" in summary and "tower GMACs:" in summary and "prefill GMACs:" in summary
    assert width == demo_model.model.get_vision_tower().image_size  # the overlay is drawn at the tower's size
    assert shot.stat().st_size > 10_000
