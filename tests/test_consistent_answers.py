"""One answer per case, however the image arrives (issue 19), against the shipped models."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from eca_serve.errors import WrongTaskError, with_article
from eca_serve.pipelines.images import sniff_format
from eca_serve.settings import Settings
from tests.hostile_images import jpeg_bytes
from tests.serving_utils import running_server

ROOT = Path(__file__).resolve().parents[1]
STAR = (ROOT / "examples" / "star.png").read_bytes()
http = httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def base() -> str:
    with running_server(Settings(model_repository=ROOT / "models")) as (url, _):
        yield url


def test_an_empty_image_is_400_as_raw_body_and_as_part(base: str) -> None:
    url = f"{base}/v1/models/shapes_classifier/classify"
    raw = http.post(url, content=b"", headers={"content-type": "image/png"})
    part = http.post(url, files={"file": ("empty.png", b"", "image/png")})
    assert (raw.status_code, part.status_code) == (400, 400), (raw.text, part.text)
    assert "empty" in raw.json()["error"] and "empty" in part.json()["error"]


def test_a_png_part_declared_text_plain_is_classified_as_its_bytes(base: str) -> None:
    url = f"{base}/v1/models/shapes_classifier/classify"
    declared = http.post(url, files={"file": ("star.png", STAR, "text/plain")})
    proper = http.post(url, files={"file": ("star.png", STAR, "image/png")})
    assert declared.status_code == 200, declared.text
    assert declared.json()["results"] == proper.json()["results"]
    assert declared.json()["results"][0]["predictions"][0]["label"] == "star"


def test_text_in_a_part_is_400_not_an_image_whatever_the_part_type(base: str) -> None:
    url = f"{base}/v1/models/shapes_classifier/classify"
    for part_type in ("text/plain", "image/png", "application/octet-stream"):
        response = http.post(url, files={"file": ("a.txt", b"hello, a text file\n" * 8, part_type)})
        assert response.status_code == 400, (part_type, response.text)
        assert "not a recognised image" in response.json()["error"]


def test_wrong_task_message_uses_the_right_article(base: str) -> None:
    response = http.post(f"{base}/v1/models/shapes_detector/classify", content=STAR, headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert "is an instance_segmentation model" in response.json()["error"]
    response = http.post(f"{base}/v1/models/shapes_classifier/detect", content=STAR, headers={"content-type": "image/png"})
    assert "is a classification model" in response.json()["error"]


def test_article_rule() -> None:
    assert with_article("instance_segmentation") == "an instance_segmentation"
    assert with_article("detection") == "a detection"
    assert str(WrongTaskError.for_model("m", "instance_segmentation", "classify")) == \
        "model 'm' is an instance_segmentation model; it does not classify"


def test_sniffing_knows_the_accepted_formats_by_their_first_bytes() -> None:
    assert sniff_format(STAR) == "PNG" and sniff_format(jpeg_bytes((20, 10))) == "JPEG"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"<html>") is None and sniff_format(b"") is None
