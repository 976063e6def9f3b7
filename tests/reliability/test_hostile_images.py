"""Hostile, broken and unusual images against the real server: exact statuses, clean errors, and it keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.reliability.clients import Prepared, error_problems, multipart_images, raw_image, same_classes, top_classes, v2_image_request
from tests.reliability.corpus import Transport, Upload, animated, exif_jpeg, frame_png, hostile_corpus, upright_png
from tests.reliability.served import CLASSIFIER, DETECTOR, Served, assert_still_serving

CASES = {case.name: case for case in hostile_corpus()}
MAIN = [name for name, case in CASES.items() if case.main]
http = httpx.Client(timeout=60)


def send(served: Served, prepared: Prepared) -> httpx.Response:
    return http.post(served.url(prepared.path), content=prepared.content, headers=prepared.headers)


def check_answer(response: httpx.Response, expected: int, what: str) -> None:
    """Exact status, JSON content type, a clean error body for 4xx, no stack trace."""
    assert response.status_code == expected, f"{what}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json"), f"{what}: {response.headers['content-type']}"
    assert not error_problems(response), f"{what}: {error_problems(response)}"


def upload(served: Served, case: Upload, transport: Transport, path: str) -> httpx.Response:
    """``case`` as a raw body or a multipart part to ``path``, checked against its expected status."""
    prepared = raw_image(path, case.body, case.content_type) if transport == "raw" else \
        multipart_images(path, [(case.filename, case.body, case.content_type)])
    response = send(served, prepared)
    check_answer(response, case.expected(transport), f"{case.name} ({transport} to {path})")
    return response


def every_class(served: Served, data: bytes, content_type: str = "application/octet-stream") -> list[list[tuple[int, float]]]:
    """All 8 classes and scores for ``data``."""
    response = send(served, raw_image(f"/v1/models/{CLASSIFIER}/classify?top_k=8", data, content_type))
    assert response.status_code == 200, response.text
    return top_classes(response.json())


@pytest.mark.parametrize("name", list(CASES))
def test_classify_raw_and_multipart(server: Served, name: str) -> None:
    case = CASES[name]
    for transport in ("raw", "multipart"):
        response = upload(server, case, transport, f"/v1/models/{CLASSIFIER}/classify?top_k=8")
        if response.status_code == 200:
            answer = top_classes(response.json())
            assert len(answer) == 1 and len(answer[0]) == 8
            if case.same_as is not None:
                assert same_classes(answer, every_class(server, case.same_as)), f"{case.name}: answer differs from its plain image"
    assert_still_serving(server)


@pytest.mark.parametrize("name", MAIN)
def test_detect_attention_and_v2_infer(server: Served, name: str) -> None:
    case = CASES[name]
    upload(server, case, "multipart", f"/v1/models/{DETECTOR}/detect?score_threshold=0.5&masks=rle")
    upload(server, case, "raw", f"/v1/models/{DETECTOR}/attention")
    upload(server, case, "multipart", f"/v1/models/{CLASSIFIER}/attention?top_k=2")
    expected = case.expected("v2")
    if expected is not None:
        for model in (CLASSIFIER, DETECTOR):
            response = send(server, v2_image_request(f"/v2/models/{model}/infer", [case.body]))
            check_answer(response, expected, f"{case.name} (v2 {model})")
    assert_still_serving(server)


@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
def test_exif_orientation_matters_to_the_classifier(server: Served, orientation: int) -> None:
    """Without this, the equality with the pre-rotated image (test above) could not fail."""
    assert not same_classes(every_class(server, upright_png(exif_jpeg(orientation))),
                            every_class(server, upright_png(exif_jpeg(1))), atol=1e-4)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_later_animation_frames_would_change_the_answer(server: Served, fmt: str) -> None:
    """Without this, the equality with frame 0 (test above) could not fail."""
    data = animated(fmt)
    assert not same_classes(every_class(server, frame_png(data, 0)), every_class(server, frame_png(data, 2)), atol=1e-4)
