"""Mixed traffic with the statuses it must get; shared by test_soak.py and bench/reliability_report.py.

A `Workload` draws requests of four families: valid ones to every endpoint (v1 classify, attention and
detect; v2 infer with encoded images and with tensors), hostile images from the corpus, bad parameters,
and fuzz (random damage to a valid body). Each `Planned` request knows which statuses are right.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

import httpx

from tests.reliability.clients import (Prepared, error_problems, multipart_images, raw_image, v2_image_request,
                                       v2_tensor_request)
from tests.reliability.corpus import Transport, Upload, encode, hostile_corpus, mutate, picture

ANY_CLIENT_ERROR = frozenset(range(400, 500))
FUZZ_STATUSES = frozenset({200}) | ANY_CLIENT_ERROR  # damaged bodies may still be valid: anything but a 5xx


@dataclass(frozen=True)
class Planned:
    """A request, the family it belongs to, and the statuses that are right for it."""

    kind: str
    prepared: Prepared
    expected: frozenset[int]


@dataclass(frozen=True)
class Outcome:
    """What one request got: status (None: no HTTP answer), seconds, and what was wrong with the answer."""

    kind: str
    status: int | None
    seconds: float
    problems: tuple[str, ...]
    started: float = 0.0


class Workload:
    """Draws `Planned` requests for a classifier and a detector.

    Args:
        classifier: Name of a served classification model.
        detector: Name of a served detection model.
        input_size: (height, width) of the classifier's input tensor.
        seed: Seeds the pool of good images.
    """

    VALID_KINDS = ("v1 classify raw", "v1 classify multipart", "v1 attention", "v1 detect", "v2 classify image",
                   "v2 classify tensor", "v2 detect image")

    def __init__(self, classifier: str, detector: str, input_size: tuple[int, int] = (64, 64), seed: int = 0) -> None:
        self.classifier, self.detector, self.input_size = classifier, detector, input_size
        rng = random.Random(seed)
        self.images = [self._image(rng, i) for i in range(16)]
        self.hostile = hostile_corpus()

    @staticmethod
    def _image(rng: random.Random, seed: int) -> tuple[bytes, str]:
        size = (rng.randint(48, 320), rng.randint(48, 320))
        if rng.random() < 0.5:
            return encode(picture(size, seed), "PNG"), "image/png"
        return encode(picture(size, seed), "JPEG", quality=rng.randint(60, 95)), "image/jpeg"

    def draw(self, rng: random.Random) -> Planned:
        """One request: 60 % valid, 20 % hostile image, 10 % bad parameters, 10 % fuzz."""
        roll = rng.random()
        if roll < 0.6:
            return self.valid(rng)
        if roll < 0.8:
            return self.hostile_image(rng)
        if roll < 0.9:
            return self.bad_parameters(rng)
        return self.fuzz(rng)

    def every_kind(self) -> list[Planned]:
        """Every valid kind with every pool image, and every hostile image once: a warm-up that reaches every
        code path and input shape, so that what memory grows afterwards is not first use."""
        rng = random.Random(0)
        valid = [self.valid(rng, image, kind) for image in self.images for kind in self.VALID_KINDS]
        hostile = [self.hostile_image(rng, case, "raw") for case in self.hostile]
        return valid + hostile

    def valid(self, rng: random.Random, image: tuple[bytes, str] | None = None, kind: str | None = None) -> Planned:
        """A request every server must answer 200: ``kind`` (one of `VALID_KINDS`) with ``image``, random if not given."""
        data, media = image or rng.choice(self.images)
        c, d = self.classifier, self.detector
        choices = {
            "v1 classify raw": lambda: raw_image(f"/v1/models/{c}/classify?top_k=3", data, media),
            "v1 classify multipart": lambda: multipart_images(f"/v1/models/{c}/classify", [("a", data, media), ("b", data, media)]),
            "v1 attention": lambda: raw_image(f"/v1/models/{c}/attention?top_k=2", data, media),
            "v1 detect": lambda: multipart_images(f"/v1/models/{d}/detect?score_threshold=0.3&masks=rle", [("s", data, media)]),
            "v2 classify image": lambda: v2_image_request(f"/v2/models/{c}/infer", [data], ["probabilities"]),
            "v2 classify tensor": lambda: v2_tensor_request(f"/v2/models/{c}/infer", 1, *self.input_size, value=rng.random()),
            "v2 detect image": lambda: v2_image_request(f"/v2/models/{d}/infer", [data], ["boxes", "scores", "labels"]),
        }
        kind = kind or rng.choice(self.VALID_KINDS)
        return Planned(kind, choices[kind](), frozenset({200}))

    def hostile_image(self, rng: random.Random, case: Upload | None = None, transport: Transport | None = None) -> Planned:
        """A corpus upload (random if not given) as a raw body, multipart part or v2 BYTES element."""
        case = case or rng.choice(self.hostile)
        transport = transport or rng.choice(["raw", "multipart", "v2"])
        expected = case.expected(transport)
        if expected is None:
            transport, expected = "raw", case.expected("raw")
        path = f"/v1/models/{self.classifier}/classify"
        prepared = {"raw": lambda: raw_image(path, case.body, case.content_type),
                    "multipart": lambda: multipart_images(path, [(case.filename, case.body, case.content_type)]),
                    "v2": lambda: v2_image_request(f"/v2/models/{self.classifier}/infer", [case.body])}[transport]()
        return Planned(f"hostile {transport}: {case.name}", prepared, frozenset({expected}))

    def bad_parameters(self, rng: random.Random) -> Planned:
        """A good image with a wrong model, parameter or endpoint, or a malformed v2 request."""
        data, media = rng.choice(self.images)
        c = self.classifier
        choices = [
            (raw_image("/v1/models/no_such_model/classify", data, media), 404),
            (raw_image(f"/v1/models/{c}/classify?top_k=0", data, media), 422),
            (raw_image(f"/v1/models/{c}/detect", data, media), 422),
            (Prepared(f"/v2/models/{c}/infer", b'{"inputs": [{"name": "image"', {"content-type": "application/json"}), 400),
            (Prepared(f"/v2/models/{c}/infer", json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 2],
                                                                       "data": [0.0] * 12}]}).encode(), {"content-type": "application/json"}), 400),
        ]
        prepared, status = rng.choice(choices)
        return Planned("bad parameters", prepared, frozenset({status}))

    def fuzz(self, rng: random.Random) -> Planned:
        """A valid request with its body (and sometimes a header) damaged by `mutate`."""
        valid = self.valid(rng).prepared
        headers = dict(valid.headers)
        if rng.random() < 0.2 and headers:
            key = rng.choice(list(headers))
            headers[key] = mutate(headers[key].encode(), rng).decode("latin-1")
            headers = {k: v for k, v in headers.items() if v.isascii() and v.isprintable() and v == v.strip()}
        return Planned("fuzz", Prepared(valid.path, mutate(valid.content, rng), headers), FUZZ_STATUSES)


async def send(client: httpx.AsyncClient, base: str, planned: Planned) -> Outcome:
    """Send one planned request and judge its answer."""
    start = time.perf_counter()
    try:
        response = await client.post(base + planned.prepared.path, content=planned.prepared.content, headers=planned.prepared.headers)
    except httpx.HTTPError as exc:
        return Outcome(planned.kind, None, time.perf_counter() - start, (f"no answer: {type(exc).__name__}: {exc}",), start)
    problems = list(error_problems(response))
    if response.status_code not in planned.expected:
        problems.append(f"status {response.status_code}, expected {sorted(planned.expected)[:4]}: {response.text[:160]!r}")
    return Outcome(planned.kind, response.status_code, time.perf_counter() - start, tuple(problems), start)
