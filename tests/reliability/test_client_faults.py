"""Clients that misbehave on the wire: vanish mid-upload or mid-batch, trickle, stall, or send huge multipart forms.

After each fault the server must hold no request in flight and answer a good request correctly.
"""

from __future__ import annotations

import asyncio
from typing import Iterator

import httpx
import pytest

from eca_serve.settings import Settings
from tests.reliability import rawhttp
from tests.reliability.clients import (Prepared, error_problems, metric, multipart_images, raw_image, same_classes,
                                       server_errors_counted, top_classes, v2_image_request, wait_idle)
from tests.reliability.corpus import encode, picture
from tests.reliability.served import CLASSIFIER, Repository, Served, assert_still_serving, serve

BODY_TIMEOUT_S = 1.0
BATCH_WINDOW_MS = 300  # long enough that requests sent together share one batch
CLASSIFY = f"/v1/models/{CLASSIFIER}/classify?top_k=8"


@pytest.fixture(scope="module")
def faulty_clients_server(repository: Repository) -> Iterator[Served]:
    settings = Settings(model_repository=repository.root, models=[CLASSIFIER], body_timeout_s=BODY_TIMEOUT_S,
                        max_batch_size=8, max_queue_delay_ms=BATCH_WINDOW_MS, timeout_s=30)
    with serve(settings) as served:
        yield served


def uploads(good: bytes) -> dict[str, Prepared]:
    """The same image as each kind of upload the API takes."""
    return {"raw": raw_image(CLASSIFY, good, "image/png"),
            "multipart": multipart_images(CLASSIFY, [("good.png", good, "image/png")]),
            "v2": v2_image_request(f"/v2/models/{CLASSIFIER}/infer", [good], ["probabilities"])}


def recovered(served: Served) -> None:
    """No request in flight, nothing queued, and the good image still gets its answer."""
    wait_idle(served.base, timeout_s=10)
    assert_still_serving(served)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("kind", ["raw", "multipart", "v2"])
def test_disconnect_mid_upload(faulty_clients_server: Served, kind: str, reset: bool) -> None:
    prepared = uploads(faulty_clients_server.good)[kind]
    content_type = prepared.headers["content-type"]
    rawhttp.abort_mid_upload(faulty_clients_server.base, prepared.path, content_type, len(prepared.content),
                             prepared.content[: len(prepared.content) // 3], reset=reset)
    recovered(faulty_clients_server)


def test_client_disconnects_are_not_counted_as_server_errors(faulty_clients_server: Served) -> None:
    """A client that hangs up is not a server failure: it must not show as a 5xx (alerts fire on those) nor log a traceback."""
    before = server_errors_counted(httpx.get(faulty_clients_server.url("/metrics"), timeout=10).text)
    prepared = uploads(faulty_clients_server.good)["raw"]
    rawhttp.abort_mid_upload(faulty_clients_server.base, prepared.path, "image/png", len(prepared.content), prepared.content[:50])
    wait_idle(faulty_clients_server.base, timeout_s=10)
    after = server_errors_counted(httpx.get(faulty_clients_server.url("/metrics"), timeout=10).text)
    assert after == before, f"a client disconnect was counted as {after - before:g} server error(s)"


def test_disconnect_mid_batch_leaves_the_other_requests_of_the_batch_correct(faulty_clients_server: Served) -> None:
    served = faulty_clients_server
    images = [encode(picture((64, 64), seed=200 + i), "PNG") for i in range(4)]
    references = [top_classes(httpx.post(served.url(CLASSIFY), content=d, headers={"content-type": "image/png"}, timeout=30).json())
                  for d in images]
    before = httpx.get(served.url(f"/v2/models/{CLASSIFIER}/stats"), timeout=10).json()["model_stats"][0]

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            staying = [asyncio.create_task(client.post(served.url(CLASSIFY), content=d, headers={"content-type": "image/png"}))
                       for d in images]
            await asyncio.sleep(0.02)  # the staying requests are queued, waiting for the batch window
            for i in range(4):
                await asyncio.to_thread(rawhttp.send_and_vanish, served.base, CLASSIFY, {"Content-Type": "image/png"},
                                        encode(picture((64, 64), seed=300 + i), "PNG"))
            return list(await asyncio.gather(*staying))

    answers = asyncio.run(scenario())
    assert [r.status_code for r in answers] == [200] * 4, [r.text[:200] for r in answers]
    for response, reference in zip(answers, references):
        assert same_classes(top_classes(response.json()), reference)
    recovered(served)
    after = httpx.get(served.url(f"/v2/models/{CLASSIFIER}/stats"), timeout=10).json()["model_stats"][0]
    # Each vanished request was either cancelled when its client left (queued or decoding: never inferred) or
    # already inferred; a cancelled one may also have been inferred (its batch was running), hence >=.
    text = httpx.get(served.url("/metrics"), timeout=10).text
    cancelled = metric(text, "eca_serve_requests_cancelled_total", model=CLASSIFIER, reason="disconnect")
    inferred_for_vanished = int(after["inference_count"]) - int(before["inference_count"]) - len(images)
    assert cancelled + inferred_for_vanished >= 4, f"{cancelled:g} cancelled, {inferred_for_vanished} inferred of 4 vanished"


@pytest.mark.parametrize("kind", ["raw", "multipart", "v2"])
def test_slow_upload_gets_408(faulty_clients_server: Served, kind: str) -> None:
    prepared = uploads(faulty_clients_server.good)[kind]
    # 32 bytes every 0.25 s: the whole body would take far longer than the body timeout to arrive.
    assert len(prepared.content) / 32 * 0.25 > 4 * BODY_TIMEOUT_S
    answer = rawhttp.trickle(faulty_clients_server.base, prepared.path, prepared.headers["content-type"], prepared.content,
                             chunk=32, interval_s=0.25, give_up_s=60)
    assert answer is not None, "no answer to a body trickling in far slower than the body timeout"
    assert answer.status == 408 and set(answer.json()) == {"error"}, answer.raw[:300]
    assert answer.body_sent < len(prepared.content), "the 408 came only once the whole body was in"
    recovered(faulty_clients_server)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_headers_without_body_get_408(faulty_clients_server: Served, framing: str) -> None:
    length = {"Content-Length": "5000"} if framing == "content-length" else {"Transfer-Encoding": "chunked"}
    answer = rawhttp.stall(faulty_clients_server.base, CLASSIFY, {"Content-Type": "image/png", **length}, wait_s=60)
    assert answer is not None, "no answer to a request whose body never comes"
    assert answer.status == 408 and set(answer.json()) == {"error"}, answer.raw[:300]
    recovered(faulty_clients_server)


def many_parts(count: int, files: bool) -> Prepared:
    """A multipart body of ``count`` tiny file parts (field ``file``) or plain text fields."""
    if files:
        return multipart_images(CLASSIFY, [(f"{i}.png", b"\x89PNG", "image/png") for i in range(count)])
    boundary = "b0undary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="field{i}"\r\n\r\nvalue\r\n' for i in range(count)]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return Prepared(CLASSIFY, body, {"content-type": f"multipart/form-data; boundary={boundary}"})


@pytest.mark.parametrize(("count", "files", "status"), [(2000, True, 413), (17, True, 413), (1000, False, 422), (40, False, 422)],
                         ids=["2000 files", "17 files", "1000 fields", "40 fields"])
def test_huge_multipart_counts_are_refused(faulty_clients_server: Served, count: int, files: bool, status: int) -> None:
    prepared = many_parts(count, files)
    response = httpx.post(faulty_clients_server.url(prepared.path), content=prepared.content, headers=prepared.headers, timeout=30)
    assert response.status_code == status and not error_problems(response), f"{response.status_code} {response.text[:200]}"
    recovered(faulty_clients_server)


def test_inflight_gauge_is_exported(faulty_clients_server: Served) -> None:
    """`recovered` relies on this gauge: make sure it exists (a missing gauge would read as 0)."""
    text = httpx.get(faulty_clients_server.url("/metrics"), timeout=10).text
    assert "eca_serve_inflight_requests " in text and metric(text, "eca_serve_inflight_requests") == 0
