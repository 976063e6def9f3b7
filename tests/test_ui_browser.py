"""The docs and the demo page in a real headless Chromium, with every non-loopback request blocked.

Needs a system Chromium (Debian: ``apt-get install chromium``; .ci/run installs it) driven by
Playwright's Python package with ``executable_path`` (Playwright's own browser download is not used).
Without a browser the tests skip, except under CI (``CI`` set), where a missing browser fails them.
Screenshots land in ``artifacts/screenshots/`` (kept by CI, ignored by git).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from eca_serve.settings import Settings
from tests.serving_utils import running_server

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Chromium's own resolver refuses every name but the loopback address: nothing can leave the machine.
OFFLINE_ARGS = ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--no-proxy-server"]
TIMEOUT_MS = 60_000


def find_browser() -> str | None:
    """``ECA_SERVE_TEST_BROWSER``, else the first Chromium on PATH."""
    return os.environ.get("ECA_SERVE_TEST_BROWSER") or next(filter(None, map(shutil.which, BROWSER_NAMES)), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    path = find_browser()
    if path is None:
        message = "no Chromium found (apt-get install chromium, or set ECA_SERVE_TEST_BROWSER); browser tests skipped"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {message}")
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' installs playwright")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, headless=True, args=OFFLINE_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_server(Settings(model_repository=ROOT / "models")) as (url, _):
        yield url


@pytest.fixture
def blocked() -> list[str]:
    """URLs the page tried to load from anywhere but the server (each was aborted)."""
    return []


@pytest.fixture
def page(browser, base: str, blocked: list[str]) -> Iterator[object]:
    """A fresh page whose requests to anything but the server are aborted and recorded in ``blocked``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    server = urlsplit(base).netloc

    def route(r) -> None:
        url = r.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).netloc == server:
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    tab.route("**/*", route)
    yield tab
    context.close()


def shot(page, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def test_swagger_ui_renders_the_operations_offline(page, base: str, blocked: list[str]) -> None:
    page.goto(f"{base}/docs")
    page.locator('[data-path="/v1/models/{name}/classify"]').first.wait_for()
    assert page.locator(".opblock").count() >= 6
    shot(page, "docs")
    assert blocked == []


def test_redoc_renders_the_operations_offline(page, base: str, blocked: list[str]) -> None:
    page.goto(f"{base}/redoc")
    page.locator('[data-section-id*="classify"]').first.wait_for(state="attached")
    page.get_by_text("/v1/models/{name}/classify").first.wait_for(state="attached")
    shot(page, "redoc", full_page=False)  # the whole reference is several screens long
    assert blocked == []


def test_no_empty_panels_before_an_image_is_chosen(page, base: str) -> None:
    page.goto(f"{base}/")
    page.locator('#model option[value="shapes_classifier"]').wait_for(state="attached")
    assert page.locator("#results").is_hidden()
    assert page.evaluate("getComputedStyle(document.getElementById('results')).display") == "none"


def run_demo(page, base: str, model: str, image: str) -> None:
    page.goto(f"{base}/")
    page.locator(f'#model option[value="{model}"]').wait_for(state="attached")
    page.select_option("#model", model)
    page.set_input_files("#file", str(ROOT / "examples" / image))
    page.locator('#status[data-state="done"], #status[data-state="error"]').wait_for()
    assert page.get_attribute("#status", "data-state") == "done", page.text_content("#status")


def attention_layer_count(base: str, model: str) -> int:
    return len(httpx.get(f"{base}/v1/models/{model}", timeout=30).json()["attention_layers"])


def test_demo_classifies_the_star_and_plots_its_attention(page, base: str, blocked: list[str]) -> None:
    run_demo(page, base, "shapes_classifier", "star.png")
    assert page.locator("#topk li").first.get_attribute("data-label") == "star"
    assert int(page.get_attribute("#attention", "data-layers")) == attention_layer_count(base, "shapes_classifier") > 0
    assert page.locator("#timing tr").count() == 3  # header, classify, attention
    shot(page, "demo_classify")
    assert blocked == []


def test_demo_draws_every_detection_the_api_returns(page, base: str, blocked: list[str]) -> None:
    run_demo(page, base, "shapes_detector", "scene.png")
    threshold = page.input_value("#threshold")
    answer = httpx.post(f"{base}/v1/models/shapes_detector/detect", params={"score_threshold": threshold, "masks": "none"},
                        content=(ROOT / "examples" / "scene.png").read_bytes(), headers={"content-type": "image/png"},
                        timeout=60).json()
    expected = len(answer["results"][0]["detections"])
    assert expected > 0
    assert int(page.get_attribute("#overlay", "data-instances")) == expected
    assert page.locator("#detections tr").count() == expected + 1
    assert int(page.get_attribute("#attention", "data-layers")) == attention_layer_count(base, "shapes_detector") > 0
    width, height = page.evaluate("[overlay.width, overlay.height]")
    labels = json.loads(page.get_attribute("#overlay", "data-labels"))
    assert len(labels) == expected and all(0 <= x and x + w <= width and 0 <= y and y + h <= height for x, y, w, h in labels)
    overlaps = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]
                if a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]]
    assert overlaps == []
    shot(page, "demo_detect")
    assert blocked == []


def test_session_panel_plots_attention_per_class_and_drift_over_time(page, base: str, blocked: list[str]) -> None:
    run_demo(page, base, "shapes_classifier", "star.png")
    assert page.locator("#session").is_visible()
    assert page.locator("#drift").is_visible()
    labels = {page.locator("#topk li").first.get_attribute("data-label")}
    for image in ("cross.png", "pentagon.png"):
        page.evaluate("document.getElementById('status').dataset.state = 'idle'")
        page.set_input_files("#file", str(ROOT / "examples" / image))
        page.locator('#status[data-state="done"], #status[data-state="error"]').wait_for()
        assert page.get_attribute("#status", "data-state") == "done", page.text_content("#status")
        labels.add(page.locator("#topk li").first.get_attribute("data-label"))
    layers = attention_layer_count(base, "shapes_classifier")
    session = page.locator("#session-attention")
    assert int(session.get_attribute("data-layers")) == layers > 0
    assert int(session.get_attribute("data-classes")) == len(labels) >= 2
    charts = session.locator("svg")
    assert charts.count() == layers
    for i in range(layers):  # one line per predicted class in every layer's chart
        names = charts.nth(i).locator("path.series").evaluate_all("ps => ps.map(p => p.dataset.name)")
        assert sorted(names) == sorted(labels)
    assert session.locator(".legend > span").count() == len(labels)
    page.locator('#drift-charts[data-polls="3"], #drift-charts[data-polls="4"]').wait_for(state="attached")
    drift = httpx.get(f"{base}/v1/models/shapes_classifier/drift", timeout=30).json()
    assert int(page.get_attribute("#drift-charts", "data-layers")) == len(drift["layers"]) == layers
    if drift["score"] is None:  # three images cannot fill the window: the page says so instead of plotting
        assert "Not enough images yet" in page.text_content("#drift-note")
        assert str(drift["min_images"]) in page.text_content("#drift-note")
    shot(page, "demo_session")
    assert blocked == []


def test_drift_panel_plots_each_layers_score_once_the_window_is_full(page, blocked: list[str]) -> None:
    # A budget this large summarises every batch, so a hundred uploaded images fill the window's minimum.
    settings = Settings(model_repository=ROOT / "models", drift_budget=1000.0)
    with running_server(settings) as (url, _):
        star = (ROOT / "examples" / "star.png").read_bytes()
        for _ in range(7):
            files = [("file", (f"star{i}.png", star, "image/png")) for i in range(16)]
            assert httpx.post(f"{url}/v1/models/shapes_classifier/classify", files=files, timeout=120).status_code == 200
        expected = httpx.get(f"{url}/v1/models/shapes_classifier/drift", timeout=30).json()
        assert expected["score"] is not None, expected
        page.route(f"{url}/**", lambda r: r.continue_())  # this server too (the latest route is matched first)
        run_demo(page, url, "shapes_classifier", "cross.png")
        page.set_input_files("#file", str(ROOT / "examples" / "pentagon.png"))
        page.locator('#drift-charts:not([data-polls="1"]) svg').wait_for()  # a second point: lines, not dots
        chart = page.locator("#drift-charts svg")
        names = chart.locator("path.series").evaluate_all("ps => ps.map(p => p.dataset.name)")
        assert names == [layer["name"] for layer in expected["layers"]]
        assert chart.locator("line.guide").count() >= 1
        assert "Not enough images" not in page.text_content("#drift-note")
        shot(page, "demo_drift")
    assert blocked == []


def test_demo_shows_the_embedding_norm_and_the_nearest_earlier_image(page, blocked: list[str], tmp_path: Path) -> None:
    from tests.task_serving import classifier_with_embedding

    classifier_with_embedding(tmp_path, "shapes_embed")
    with running_server(Settings(model_repository=tmp_path)) as (url, _):
        page.route(f"{url}/**", lambda r: r.continue_())
        run_demo(page, url, "shapes_embed", "star.png")
        note = page.locator("#embedding")
        assert note.is_visible() and note.get_attribute("data-nearest") == ""
        star = httpx.post(f"{url}/v1/models/shapes_embed/embed", content=(ROOT / "examples" / "star.png").read_bytes(),
                          headers={"content-type": "image/png"}, timeout=60).json()["results"][0]
        assert float(note.get_attribute("data-norm")) == pytest.approx(star["norm"], rel=1e-6)
        for image in ("cross.png", "star.png"):  # the second star's nearest earlier image is the first star
            page.evaluate("document.getElementById('status').dataset.state = 'idle'")
            page.set_input_files("#file", str(ROOT / "examples" / image))
            page.locator('#status[data-state="done"], #status[data-state="error"]').wait_for()
        assert note.get_attribute("data-nearest") == "star.png" and "cosine 1.000" in note.text_content()
        shot(page, "demo_embed")
    assert blocked == []
