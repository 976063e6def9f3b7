"""HTTP helpers shared by tests/reliability and bench/reliability_report.py: request bodies, answer checks, metrics."""

from __future__ import annotations

import json
import re
import struct
import time
from dataclasses import dataclass
from typing import Any

import httpx

V2_HEADER = "Inference-Header-Content-Length"
TRACE_MARKERS = ("Traceback", 'File "')
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\})? (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def client_limits(connections: int) -> httpx.Limits:
    """Connection limits for test clients.

    Idle connections expire after 2 s, before uvicorn's 5 s keep-alive timeout: with equal timeouts
    the client may send a request on a connection the server is just closing, and that request is
    lost to the race, not to the server.
    """
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0)


@dataclass(frozen=True)
class Prepared:
    """Everything httpx needs for one POST: path (with query), body and headers."""

    path: str
    content: bytes
    headers: dict[str, str]


def raw_image(path: str, body: bytes, content_type: str | None) -> Prepared:
    """An image sent as the whole request body."""
    return Prepared(path, body, {"content-type": content_type} if content_type else {})


def multipart_images(path: str, files: list[tuple[str, bytes, str]], boundary: str = "eca-reliability-boundary") -> Prepared:
    """Images as repeated multipart field ``file``: (filename, bytes, part content type) each."""
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
              f"Content-Type: {media}\r\n\r\n").encode() + data + b"\r\n" for name, data, media in files]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return Prepared(path, body, {"content-type": f"multipart/form-data; boundary={boundary}"})


def v2_image_request(path: str, images: list[bytes], outputs: list[str] | None = None) -> Prepared:
    """A v2 infer request: input ``image`` BYTES [N] in the binary tensor extension, outputs as JSON."""
    blob = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header: dict[str, Any] = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                          "parameters": {"binary_data_size": len(blob)}}]}
    if outputs is not None:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": False}} for name in outputs]
    head = json.dumps(header).encode()
    return Prepared(path, head + blob, {V2_HEADER: str(len(head)), "content-type": "application/octet-stream"})


def v2_tensor_request(path: str, rows: int, height: int, width: int, value: float = 0.5) -> Prepared:
    """A v2 infer request: input ``input`` FP32 [rows, 3, height, width] filled with ``value``, as JSON."""
    count = rows * 3 * height * width
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 3, height, width], "data": [value] * count}],
            "outputs": [{"name": "probabilities"}]}
    return Prepared(path, json.dumps(body).encode(), {"content-type": "application/json"})


def error_problems(response: httpx.Response) -> list[str]:
    """What is wrong with an answer's body: a stack trace anywhere, or a non-2xx body that is not ``{"error": "<text>"}``."""
    problems = [f"body shows {marker!r}" for marker in TRACE_MARKERS if marker in response.text]
    if response.status_code < 400:
        return problems
    try:
        body = response.json()
    except ValueError:
        return [*problems, f"{response.status_code} body is not JSON: {response.text[:200]!r}"]
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], str) or not body["error"].strip():
        problems.append(f'{response.status_code} body is not {{"error": "<message>"}}: {response.text[:200]!r}')
    return problems


def top_classes(body: dict[str, Any]) -> list[list[tuple[int, float]]]:
    """(class index, score) of every prediction of every result of a v1 classify or attention answer."""
    return [[(p["index"], p["score"]) for p in result["predictions"]] for result in body["results"]]


def same_classes(a: list[list[tuple[int, float]]], b: list[list[tuple[int, float]]], atol: float = 1e-5) -> bool:
    """Same classes in the same order with scores within ``atol``."""
    return len(a) == len(b) and all(
        len(x) == len(y) and all(i == j and abs(s - t) <= atol for (i, s), (j, t) in zip(x, y)) for x, y in zip(a, b))


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
    return sum(v for n, found, v in parse_metrics(text) if n == name and all(found.get(k) == w for k, w in labels.items()))


def server_errors_counted(text: str) -> float:
    """Requests the server itself counted with a 5xx status."""
    return sum(v for n, found, v in parse_metrics(text) if n == "eca_serve_requests_total" and found.get("status", "").startswith("5"))


def wait_idle(base: str, timeout_s: float = 15.0) -> float:
    """Poll /metrics until no HTTP request is in flight and no batch queue holds anything; returns the seconds it took.

    Raises:
        AssertionError: Still busy after ``timeout_s``, with the last gauges.
    """
    start = time.monotonic()
    text = ""
    while time.monotonic() - start < timeout_s:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        busy = metric(text, "eca_serve_inflight_requests") + metric(text, "eca_serve_queue_depth") \
            + metric(text, "eca_serve_batch_in_flight")
        if busy == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    gauges = [line for line in text.splitlines() if line.startswith(("eca_serve_inflight", "eca_serve_queue_depth", "eca_serve_batch_in"))]
    raise AssertionError(f"server still busy after {timeout_s} s: {gauges}")

