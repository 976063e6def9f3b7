"""/metrics moves correctly with traffic (scraped before and after, real server)."""

import re

import httpx
import pytest

from eca_serve.settings import Settings
from tests.hostile_images import png_bytes
from tests.serving_utils import export_small_classifier, running_server


CLASSIFY = "/v1/models/{name}/classify"
# (method, path) of every kind of per-model route; {n} is a made-up name, {v} a made-up version.
PROBES = [
    ("POST", "/v1/models/{n}/classify"), ("POST", "/v1/models/{n}/detect"), ("POST", "/v1/models/{n}/attention"),
    ("GET", "/v1/models/{n}"), ("GET", "/v1/models/{n}?version={v}"), ("GET", "/v2/models/{n}"),
    ("GET", "/v2/models/{n}/versions/{v}"), ("GET", "/v2/models/{n}/ready"), ("GET", "/v2/models/{n}/versions/{v}/ready"),
    ("GET", "/v2/models/{n}/config"), ("GET", "/v2/models/{n}/stats"), ("POST", "/v2/models/{n}/infer"),
    ("POST", "/v2/models/{n}/versions/{v}/infer"), ("GET", "/v2/models/shapes_small/versions/{v}"),
    ("POST", "/v2/models/shapes_small/versions/{v}/infer"), ("GET", "/no/such/{n}/path"), ("DELETE", "/v2/models/{n}"),
]


def scrape(base: str) -> dict[str, float]:
    """Sample name with labels -> value."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    samples = {}
    for line in text.splitlines():
        match = re.match(r'^([a-zA-Z_:][\w:]*(?:\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?) ([-+0-9.eE]+|NaN)$', line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    hits = [v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in wanted)]
    return sum(hits)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("models")
    export_small_classifier(root)
    with running_server(Settings(model_repository=root, max_batch_size=4, max_queue_delay_ms=20)) as (base, app):
        yield base


def test_counters_and_histograms_move_with_requests(server) -> None:
    before = scrape(server)
    client = httpx.Client(timeout=60)
    for i in range(3):
        assert client.post(f"{server}/v1/models/shapes_small/classify", content=png_bytes(seed=i), headers={"content-type": "image/png"}).status_code == 200
    assert client.post(f"{server}/v1/models/shapes_small/classify", content=b"junk", headers={"content-type": "image/png"}).status_code == 400
    assert client.post(f"{server}/v1/models/shapes_small/attention", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 200
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("eca_serve_requests_total", model="shapes_small", endpoint=CLASSIFY, status="200") == 3
    assert delta("eca_serve_requests_total", model="shapes_small", endpoint=CLASSIFY, status="400") == 1
    assert delta("eca_serve_requests_total", model="shapes_small", endpoint="/v1/models/{name}/attention", status="200") == 1
    assert delta("eca_serve_request_duration_seconds_count", model="shapes_small", endpoint=CLASSIFY) == 4
    for stage in ("preprocess", "queue", "postprocess"):  # the junk image fails in decoding: no stage recorded
        assert delta("eca_serve_stage_duration_seconds_count", model="shapes_small", stage=stage) == 4
    assert delta("eca_serve_inference_count_total", model="shapes_small") == 4
    executions = delta("eca_serve_execution_count_total", model="shapes_small")
    assert 1 <= executions <= 4
    assert delta("eca_serve_stage_duration_seconds_count", model="shapes_small", stage="inference") == executions
    assert delta("eca_serve_batch_size_count", model="shapes_small") == executions
    assert delta("eca_serve_batch_size_sum", model="shapes_small") == 4
    assert value(after, "eca_serve_queue_depth", model="shapes_small") == 0
    assert value(after, "eca_serve_model_load_seconds", model="shapes_small") > 0
    assert "eca_serve_inflight_requests" in {k.split("{")[0] for k in after}


def test_metrics_endpoint_is_prometheus_text(server) -> None:
    response = httpx.get(f"{server}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert "# TYPE eca_serve_requests_total counter" in response.text
    assert "# TYPE eca_serve_stage_duration_seconds histogram" in response.text


def series_lines(base: str) -> int:
    return sum(1 for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines() if line and not line.startswith("#"))


def test_made_up_names_and_versions_add_no_series(server) -> None:
    client = httpx.Client(timeout=60)

    def send(i: int) -> None:
        method, path = PROBES[i % len(PROBES)]
        response = client.request(method, server + path.format(n=f"nope{i}", v=1000 + i), content=b"{}")
        assert 400 <= response.status_code < 500, (path, response.status_code)

    for i in range(2 * len(PROBES)):  # every kind of route twice: every series the probes can add exists now
        send(i)
    settled = series_lines(server)
    for i in range(2 * len(PROBES), 1000):
        send(i)
    text = httpx.get(f"{server}/metrics", timeout=30).text
    assert series_lines(server) == settled
    assert "nope" not in text and 'model="_unknown"' in text and 'endpoint="_unmatched"' in text
    assert 'endpoint="/v2/models/{name}/versions/{version}/ready"' in text and 'protocol="http"' in text
