"""llava.serve.web in a real headless Chromium: the launched app's page loads, a question submitted through gradio's
HTTP API gets an answer and a segment image, and a screenshot of the page is written (docs/web_demo.png when
WEB_DEMO_SCREENSHOT names it). Slow; skipped when chromium or gradio is absent."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llava.prompting import Decoding
from llava.serve.web import build_demo

from .test_web import loaded  # noqa: F401  (the tiny checkpoint fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1400"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_web_demo_in_headless_chromium(loaded, tmp_path):  # noqa: F811
    pytest.importorskip("gradio")
    from gradio_client import Client

    demo = build_demo([loaded], Decoding(temperature=0.0, max_new_tokens=8))
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        url = demo.local_url
        dom = _chromium("--virtual-time-budget=15000", "--dump-dom", url).stdout
        assert "LLaVA-DRIP" in dom and "question" in dom  # the page rendered gradio's components
        answer, segments, summary = Client(url, verbose=False).predict(None, "astronaut", "Describe object 1.", False,
                                                                      api_name="/ask")
        assert isinstance(answer, str) and "visual tokens:" in summary
        assert segments is not None and Path(segments if isinstance(segments, str) else segments["path"]).exists()
        shot = Path(os.environ.get("WEB_DEMO_SCREENSHOT", tmp_path / "web_demo.png"))
        _chromium("--virtual-time-budget=15000", f"--screenshot={shot}", url)
        assert shot.exists() and shot.stat().st_size > 10_000
    finally:
        demo.close()
