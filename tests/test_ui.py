"""Offline docs and the demo page: every asset a page names is served by the server itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from eca_serve.api import create_app
from eca_serve.settings import Settings

PAGES = ["/docs", "/redoc", "/"]
CSS_URL = re.compile(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)")
ASSET_ATTRIBUTES = {("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src"), ("source", "src")}


class AssetParser(HTMLParser):
    """Collects the URLs a page loads: script/img/iframe src, link href, url() in style blocks and attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (tag, name) in ASSET_ATTRIBUTES:
                self.urls.append(value)
            if value and name == "style":
                self.urls += CSS_URL.findall(value)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += CSS_URL.findall(data)


def page_assets(html: str) -> list[str]:
    parser = AssetParser()
    parser.feed(html)
    return parser.urls


def foreign(urls: list[str], server: str) -> list[str]:
    """URLs that would leave ``server`` (data: URLs and relative paths stay)."""
    absolute = [u for u in urls if u.lower().startswith(("http:", "https:", "//"))]
    return [u for u in absolute if urlsplit(urljoin(server, u)).netloc != urlsplit(server).netloc]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # No lifespan: pages and static files need no model.
    return TestClient(create_app(Settings(model_repository=tmp_path_factory.mktemp("empty"))), base_url="http://testserver")


def test_the_parser_finds_every_kind_of_foreign_asset() -> None:
    html = ('<link rel="stylesheet" href="https://cdn.example/a.css"><script src="//cdn.example/b.js"></script>'
            '<img src="http://testserver/ok.png"><div style="background: url(\'https://fonts.example/f.woff\')"></div>'
            '<style>@font-face { src: url(https://fonts.example/g.woff2) }</style><img src="data:image/png;base64,AA">')
    assert foreign(page_assets(html), "http://testserver") == [
        "https://cdn.example/a.css", "//cdn.example/b.js", "https://fonts.example/f.woff", "https://fonts.example/g.woff2"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_load_only_assets_of_the_server(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls = page_assets(response.text)
    assert urls, "a page with no script or style sheet is not the page we meant"
    assert foreign(urls, "http://testserver") == []
    for url in urls:
        if not url.startswith("data:"):
            asset = client.get(urljoin(f"http://testserver{path}", url))
            assert asset.status_code == 200, url
            if url.endswith(".css"):
                assert foreign(CSS_URL.findall(asset.text), "http://testserver") == [], url


@pytest.mark.parametrize("path", PAGES)
def test_pages_forbid_images_fonts_and_fetches_from_elsewhere(client: TestClient, path: str) -> None:
    policy = client.get(path).headers["content-security-policy"]
    for directive in ("img-src 'self'", "font-src 'self'", "connect-src 'self'"):
        assert directive in policy


def test_redoc_has_no_web_fonts_and_docs_point_at_our_schema(client: TestClient) -> None:
    assert "fonts.googleapis" not in client.get("/redoc").text
    docs = client.get("/docs").text
    assert "/openapi.json" in docs and '"validatorUrl": null' in docs


def test_demo_page_names_its_controls(client: TestClient) -> None:
    html = client.get("/").text
    for element in ('id="model"', 'id="file"', 'id="overlay"', 'id="attention"', 'id="timing"', 'id="topk"'):
        assert element in html
    script = client.get("/ui/app.js").text
    assert "v1/models" in script and "masks=polygon" in script and "/attention" in script


def test_ui_off_answers_404_and_docs_stay(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(model_repository=tmp_path, ui=False)))
    assert client.get("/").status_code == 404
    assert client.get("/ui/app.js").status_code == 404
    assert client.get("/docs").status_code == 200


def test_ui_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECA_SERVE_UI", "false")
    assert Settings().ui is False


def test_demo_files_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["eca_serve.api"]
    shipped = Path(__file__).parents[1] / "eca_serve" / "api"
    files = {p.relative_to(shipped).as_posix() for p in (shipped / "static" / "ui").iterdir()}
    assert files and files <= {str(f) for pattern in patterns for f in
                               (p.relative_to(shipped).as_posix() for p in shipped.glob(pattern))}


def test_every_script_the_page_loads_is_served_and_the_session_panels_start_hidden(client: TestClient) -> None:
    html = client.get("/").text
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert "ui/session.js" in scripts and scripts.index("ui/session.js") < scripts.index("ui/app.js")
    for src in scripts:
        answer = client.get(f"/{src}")
        assert answer.status_code == 200 and "javascript" in answer.headers["content-type"]
    for panel in ("session", "drift"):
        assert re.search(rf'<section id="{panel}"[^>]*\bhidden\b', html)
    assert "/drift" in client.get("/ui/session.js").text
