"""HTTP v2 and gRPC answer from one data plane: one table of lookup, version, readiness, refusal and statistics cases.

One real server (`eca_serve.api.server.Server`: uvicorn and grpc.aio side by side, in a thread) serves the
shipped classifier as versions 1, 2 and 3 (version 3 stopped, as a retired or crashed version is) and a
second model unloaded through the admin API. Every row is sent over both protocols; each answers with its
own status, and an error carries the same text in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from eca_serve.api import create_app
from eca_serve.api.grpc.protocol import SERVICE, rpc_types
from eca_serve.api.server import Server
from eca_serve.dataplane import DataPlane, InflightLimitError, parse_version
from eca_serve.errors import InferenceRequestError, ShuttingDownError, UnknownModelError
from eca_serve.settings import Settings
from tests.serving_utils import free_port

MODELS = Path(__file__).resolve().parents[1] / "models"
CLS, SPARE = "shapes_classifier", "spare"
TOKEN = "table-token"
MAX_INFLIGHT = 3
OK = grpc.StatusCode.OK
Undo = Callable[[], None]
Hold = Callable[[DataPlane], Undo]  # puts the plane in a state; returns what takes it back


def nothing(plane: DataPlane) -> Undo:
    return lambda: None


def server_full(plane: DataPlane) -> Undo:
    """Every server-wide slot held, as by requests still being answered."""
    for _ in range(plane.max_inflight):
        plane.enter()

    def undo() -> None:
        for _ in range(plane.max_inflight):
            plane.leave()
    return undo


def model_full(plane: DataPlane) -> Undo:
    """Every slot of the classifier held (its own limit, below the server's)."""
    held = 0
    with contextlib.suppress(InflightLimitError):
        while True:
            plane.admit(CLS)
            held += 1

    def undo() -> None:
        for _ in range(held):
            plane.release(CLS)
    return undo


def draining(plane: DataPlane) -> Undo:
    plane.draining = True
    return lambda: setattr(plane, "draining", False)


def model_path(name: str, version: str | None, tail: str = "") -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + tail


def stats_keys(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["version"]) for s in body.get("model_stats", [])]


def ready_flag(body: dict[str, Any]) -> bool:
    return bool(body.get("ready", False))


def versions_of(body: dict[str, Any]) -> list[str]:
    return list(body.get("versions", []))


@dataclass(frozen=True)
class Case:
    """One request over both protocols: (HTTP method, path), (RPC, request fields), and what each answers.

    ``message``: the error text of whichever protocol answers an error (the same text in both); ``view`` of a
    successful answer must equal ``answer``.
    """

    id: str
    http: tuple[str, str]
    rpc: tuple[str, dict[str, Any]]
    status: int
    code: grpc.StatusCode
    message: str = ""
    view: Callable[[dict[str, Any]], Any] = ready_flag
    answer: Any = None
    hold: Hold = field(default=nothing)


def meta(name: str, version: str | None, status: int, code: grpc.StatusCode, message: str) -> Case:
    return Case(f"metadata {name} v{version}", ("GET", model_path(name, version)),
                ("ModelMetadata", {"name": name, "version": version or ""}), status, code, message)


INFER = ("POST", model_path(CLS, None, "/infer"))
INFER_RPC = ("ModelInfer", {"model_name": CLS})
CASES = [
    meta("nope", None, 404, grpc.StatusCode.NOT_FOUND, f"unknown model 'nope'; available: ['{CLS}']"),
    meta(SPARE, None, 404, grpc.StatusCode.NOT_FOUND, f"unknown model '{SPARE}'; available: ['{CLS}']"),
    meta(CLS, "9", 404, grpc.StatusCode.NOT_FOUND, f"model '{CLS}' has no version 9; available: [1, 2, 3]"),
    meta(CLS, "x1", 400, grpc.StatusCode.INVALID_ARGUMENT, "model version must be an integer >= 1, got 'x1'"),
    meta(CLS, "0", 400, grpc.StatusCode.INVALID_ARGUMENT, "model version must be an integer >= 1, got '0'"),
    meta(CLS, "3", 503, grpc.StatusCode.UNAVAILABLE, f"model {CLS}/3 is not ready"),
    Case("metadata of the newest ready version", ("GET", model_path(CLS, None)), ("ModelMetadata", {"name": CLS}),
         200, OK, view=versions_of, answer=["1", "2", "3"]),
    Case("ready, newest ready version", ("GET", model_path(CLS, None, "/ready")), ("ModelReady", {"name": CLS}),
         200, OK, answer=True),
    Case("ready, a stopped version", ("GET", model_path(CLS, "3", "/ready")), ("ModelReady", {"name": CLS, "version": "3"}),
         503, OK, message=f"model {CLS}/3 is not ready", answer=False),
    Case("ready, an unloaded model", ("GET", model_path(SPARE, None, "/ready")), ("ModelReady", {"name": SPARE}),
         404, grpc.StatusCode.NOT_FOUND, message=f"unknown model '{SPARE}'; available: ['{CLS}']"),
    Case("ready, a bad version", ("GET", model_path(CLS, "v2", "/ready")), ("ModelReady", {"name": CLS, "version": "v2"}),
         400, grpc.StatusCode.INVALID_ARGUMENT, message="model version must be an integer >= 1, got 'v2'"),
    Case("server ready with a version stopped", ("GET", "/v2/health/ready"), ("ServerReady", {}), 503, OK,
         message=f"not ready: {CLS}/3 (stopped)", answer=False),
    Case("server ready while draining", ("GET", "/v2/health/ready"), ("ServerReady", {}), 503, OK,
         message="server is shutting down", answer=False, hold=draining),
    Case("infer while draining", INFER, INFER_RPC, 503, grpc.StatusCode.UNAVAILABLE,
         message="server is shutting down", hold=draining),
    Case("infer, server full", INFER, INFER_RPC, 503, grpc.StatusCode.RESOURCE_EXHAUSTED, hold=server_full,
         message=f"server is at its limit of {MAX_INFLIGHT} requests in flight; retry later"),
    Case("infer, model full", INFER, INFER_RPC, 503, grpc.StatusCode.RESOURCE_EXHAUSTED, hold=model_full,
         message=f"model '{CLS}' is at its limit of 2 requests in flight; retry later"),
    Case("statistics of all", ("GET", "/v2/models/stats"), ("ModelStatistics", {}), 200, OK, view=stats_keys,
         answer=[(CLS, "1"), (CLS, "2"), (CLS, "3")]),
    Case("statistics of a model", ("GET", model_path(CLS, None, "/stats")), ("ModelStatistics", {"name": CLS}), 200, OK,
         view=stats_keys, answer=[(CLS, "1"), (CLS, "2"), (CLS, "3")]),
    Case("statistics of a version", ("GET", model_path(CLS, "2", "/stats")), ("ModelStatistics", {"name": CLS, "version": "2"}),
         200, OK, view=stats_keys, answer=[(CLS, "2")]),
    Case("statistics of an unknown model", ("GET", model_path("nope", None, "/stats")), ("ModelStatistics", {"name": "nope"}),
         404, grpc.StatusCode.NOT_FOUND, message=f"unknown model 'nope'; available: ['{CLS}']"),
]


def repository(root: Path, entries: tuple[tuple[str, int], ...] = ((CLS, 1), (CLS, 2), (CLS, 3), (SPARE, 1))) -> Path:
    """The shipped classifier as versions 1 to 3 and as model ``spare``; one batch of at most 2 rows in flight."""
    source = MODELS / CLS / "1"
    for name, version in entries:
        entry = root / name / str(version)
        entry.mkdir(parents=True)
        for path in source.iterdir():
            if path.name != "config.json":
                (entry / path.name).symlink_to(path)
        config = json.loads((source / "config.json").read_text())
        config.update(name=name, version=version)
        config["serving"] = {"device": "cpu", "max_batch_size": 1, "instances": 1, "max_queue_size": 1, "max_inflight": 2}
        (entry / "config.json").write_text(json.dumps(config))
    return root


@dataclass
class Running:
    """A `Server` serving in a thread, its HTTP base URL and a gRPC channel to it."""

    server: Server
    base: str
    channel: grpc.Channel
    thread: threading.Thread

    @property
    def plane(self) -> DataPlane:
        return self.server.plane

    def on_loop(self, call: Callable[[], Any]) -> Any:
        """``call()`` on the server's event loop (the data plane is not thread-safe), its result."""
        async def run() -> Any:
            return call()
        assert self.server.loop is not None
        return asyncio.run_coroutine_threadsafe(run(), self.server.loop).result(30)

    def rpc(self, name: str, fields: dict[str, Any]) -> tuple[grpc.StatusCode, Any]:
        request_type, response_type = rpc_types()[name]
        call = self.channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=request_type.SerializeToString,
                                        response_deserializer=response_type.FromString)
        try:
            response = call(request_type(**fields), timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return OK, json_format.MessageToDict(response, preserving_proto_field_name=True)


@contextlib.contextmanager
def serving(models: Path, grace_s: float = 1) -> Iterator[Running]:
    """A `Server` on ``models`` (HTTP and gRPC) in a thread, once every model is ready."""
    port, grpc_port = free_port(), free_port()
    settings = Settings(model_repository=models, ui=False, port=port, grpc_port=grpc_port, max_inflight_requests=MAX_INFLIGHT,
                        admin_enabled=True, admin_token=TOKEN, log_level="warning")
    server = Server(create_app(settings), "127.0.0.1", port, grace_s=grace_s, grpc_port=grpc_port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        _wait(lambda: _status(f"{base}/healthz") == 200)
        yield Running(server, base, channel, thread)
    finally:
        channel.close()
        server.request_exit()
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with serving(repository(tmp_path_factory.mktemp("models"))) as running:
        unloaded = httpx.post(f"{running.base}/v2/repository/models/{SPARE}/unload",
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert unloaded.status_code == 200, unloaded.text
        stopped = running.on_loop(lambda: running.plane.model(CLS, 3))
        asyncio.run_coroutine_threadsafe(stopped.stop(0), running.server.loop).result(30)
        yield running


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


def _wait(condition: Callable[[], bool], timeout_s: float = 120) -> None:
    """Poll ``condition`` (the timeout only guards against a hang)."""
    event = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        event.wait(0.05)
    raise AssertionError("the server did not become ready")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_http_and_grpc_answer_each_case_from_the_same_code(running: Running, case: Case) -> None:
    method, path = case.http
    undo = running.on_loop(lambda: case.hold(running.plane))
    try:
        response = httpx.request(method, running.base + path, content=b"{}" if method == "POST" else None, timeout=30)
        code, answer = running.rpc(*case.rpc)
    finally:
        running.on_loop(undo)
    assert response.status_code == case.status, response.text
    assert code == case.code, answer
    if case.status >= 400:
        assert response.json() == {"error": case.message}
    else:
        assert case.view(response.json()) == case.answer
    if case.code != OK:
        assert answer == case.message  # the same text as HTTP's error, where both fail
    else:
        assert case.view(answer) == case.answer
    if case.status >= 400 and case.code != OK:
        assert response.json()["error"] == answer


@pytest.mark.parametrize("ending", ["answered", "second signal"])
def test_the_server_drains_both_protocols_then_stops_them_and_the_models(tmp_path: Path, ending: str) -> None:
    with serving(repository(tmp_path, ((CLS, 1),)), grace_s=600) as running:
        running.on_loop(running.plane.enter)  # a request still being answered
        running.server.request_exit()
        _wait(lambda: _status(f"{running.base}/v2/health/ready") == 503)
        assert running.rpc("ServerReady", {}) == (OK, {})  # ready: false, proto3's default, is not written
        refused = httpx.get(f"{running.base}{model_path(CLS, None)}", timeout=30)
        assert (refused.status_code, refused.json()) == (503, {"error": "server is shutting down"})
        assert running.rpc("ModelMetadata", {"name": CLS}) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        assert running.thread.is_alive()  # the held request keeps both servers up (its grace is 600 s)
        if ending == "answered":
            running.on_loop(running.plane.leave)
        else:
            running.server.request_exit()
        running.thread.join(timeout=60)
        assert not running.thread.is_alive()
        assert _status(f"{running.base}/healthz") == 0  # HTTP closed
        assert not any(p.ready for p in running.plane.models())  # the models stopped after both fronts


@pytest.mark.parametrize(("version", "number"), [(None, None), ("", None), ("1", 1), ("007", 7), (3, 3), ("1" * 18, int("1" * 18))])
def test_versions_as_protocols_spell_them(version: str | int | None, number: int | None) -> None:
    assert parse_version(version) == number


@pytest.mark.parametrize("version", ["0", 0, "-1", "x", "1.0", " 1", "\u0663", "1" * 19])
def test_a_version_that_is_not_an_integer_of_at_least_1_is_a_bad_request(version: str | int) -> None:
    with pytest.raises(InferenceRequestError, match="model version must be an integer >= 1"):
        parse_version(version)


def test_the_plane_refuses_past_its_limit_and_while_draining_and_counts_back_down(tmp_path: Path) -> None:
    plane = create_app(Settings(model_repository=tmp_path, max_inflight_requests=2)).state.dataplane
    plane.enter()
    plane.enter()
    with pytest.raises(InflightLimitError, match="limit of 2 requests"):
        plane.enter()
    plane.leave()
    plane.enter()  # a slot given back is taken again
    plane.draining = True
    with pytest.raises(ShuttingDownError, match="shutting down"):
        plane.enter()
    assert plane.inflight == 2
    assert plane.admit("not-served") is False  # not counted: its lookup answers 404
    with pytest.raises(UnknownModelError):
        plane.model("not-served")
    assert plane.server_ready().reason == "server is shutting down"
