"""Prometheus metrics (prometheus-client): requests, stage latencies, batching, queues, load times, GPU memory.

Label values are bounded: a model label is a name the manager knows (else `UNKNOWN_MODEL`), an endpoint
label is a route template (``/v1/models/{name}/classify``), never a raw path. A client that sends a
thousand made-up names adds no series.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from eca_serve.batching.admission import CANCEL_REASONS, Admission
from eca_serve.pipelines.manager import ModelManager

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
UNKNOWN_MODEL = "_unknown"
UNMATCHED = "_unmatched"
REFUSED = "refused"


class ServerMetrics:
    """Every metric of one app, in its own registry (several apps in one process do not collide)."""

    def __init__(self, inflight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.live = _LiveCollector()
        self.requests = Counter("eca_serve_requests", "Requests by protocol, model, endpoint (route template) and status",
                                ["protocol", "model", "endpoint", "status"], registry=r)
        self.request_seconds = Histogram("eca_serve_request_duration_seconds", "Request latency",
                                         ["protocol", "model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("eca_serve_stage_duration_seconds", "Time per pipeline stage "
                                       "(preprocess, queue, inference, postprocess)", ["model", "stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("eca_serve_batch_size", "Images per forward pass", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.inferences = Counter("eca_serve_inference_count", "Images inferred (Triton's inference count)", ["model"], registry=r)
        self.executions = Counter("eca_serve_execution_count", "Forward passes (Triton's execution count)", ["model"], registry=r)
        self.cancelled = Counter("eca_serve_requests_cancelled", "Requests given up before their answer, by reason: "
                                 "disconnect (client left or cancelled), deadline (gRPC deadline), timeout (request timeout)",
                                 ["model", "reason"], registry=r)
        Gauge("eca_serve_inflight_requests", "HTTP requests being served", registry=r).set_function(inflight)
        r.register(self.live)

    def watch(self, manager: ModelManager, admission: Admission | None = None) -> None:
        """Report ``manager``'s queues and load times (and ``admission``'s counts) at scrape time."""
        self.live.manager, self.live.admission = manager, admission

    def observe_cancel(self, model: str, reason: str) -> None:
        """Count one request given up before its answer; ``reason`` is one of `CANCEL_REASONS`."""
        if reason not in CANCEL_REASONS:
            raise ValueError(f"cancel reason must be one of {CANCEL_REASONS}, got {reason!r}")
        self.cancelled.labels(self.model_label(model), reason).inc()

    def observe_stage(self, model: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(model, stage).observe(seconds)

    def batch_observer(self, model: str) -> Callable[[int, list[float], float], None]:
        """The batcher's ``on_batch`` callback for ``model``."""
        def on_batch(size: int, queue_times: list[float], compute_s: float) -> None:
            self.batch_size.labels(model).observe(size)
            self.inferences.labels(model).inc(size)
            self.executions.labels(model).inc()
            for seconds in queue_times:
                self.stage_seconds.labels(model, "queue").observe(seconds)
        return on_batch

    def observe_request(self, model: str, endpoint: str, status: int | str, seconds: float, protocol: str = "http") -> None:
        """Count one answered request.

        Args:
            model: the model name the client asked for ("" when the endpoint names none); names the
                manager does not know are counted as `UNKNOWN_MODEL`.
            endpoint: a bounded name: the route template, `UNMATCHED` or `REFUSED` (gRPC: the method).
        """
        model = self.model_label(model)
        self.requests.labels(protocol, model, endpoint, str(status)).inc()
        self.request_seconds.labels(protocol, model, endpoint).observe(seconds)

    def model_label(self, name: str) -> str:
        """``name`` if the manager knows it (or ""), else `UNKNOWN_MODEL`."""
        manager = self.live.manager
        if not name or (manager is not None and name in manager.names()):
            return name
        return UNKNOWN_MODEL

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Values read at scrape time: queue depth, in-flight batches, model load time, GPU memory."""

    manager: ModelManager | None = None
    admission: Admission | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.manager is None:
            return
        depth = GaugeMetricFamily("eca_serve_queue_depth", "Requests waiting in the batch queue", labels=["model", "version"])
        busy = GaugeMetricFamily("eca_serve_batch_in_flight", "Requests in the running batch", labels=["model", "version"])
        ready = GaugeMetricFamily("eca_serve_model_ready", "1 while the model version serves, 0 while it is not ready "
                                  "(stopping, or a crashed batch worker awaits its restart)", labels=["model", "version"])
        crashes = CounterMetricFamily("eca_serve_worker_crashes", "Batch worker crashes (each one restarted with backoff)",
                                      labels=["model", "version"])
        for pipeline in self.manager.loaded():
            stats, labels = pipeline.batcher.stats(), [pipeline.config.name, str(pipeline.config.version)]
            depth.add_metric(labels, stats.queue_depth)
            busy.add_metric(labels, stats.in_flight)
            ready.add_metric(labels, 1.0 if pipeline.ready else 0.0)
            crashes.add_metric(labels, stats.worker_crash_count)
        yield from (depth, busy, ready, crashes)
        if self.admission is not None:
            admitted = GaugeMetricFamily("eca_serve_admitted_requests", "Requests of the model held now (decoding, queued "
                                         "or running), against its in-flight limit", labels=["model"])
            for name in sorted({p.config.name for p in self.manager.loaded()}):
                admitted.add_metric([name], self.admission.admitted(name))
            yield admitted
        load = GaugeMetricFamily("eca_serve_model_load_seconds", "Load + warm-up time", labels=["model", "version"])
        for key, seconds in sorted(self.manager.load_seconds.items()):
            load.add_metric(key.split("/", 1), seconds)
        yield load
        yield from _gpu_memory()


def _gpu_memory() -> Iterator[GaugeMetricFamily]:
    import sys

    torch = sys.modules.get("torch")  # only report if torch is already in use: never import it for a scrape
    if torch is None or not torch.cuda.is_available():
        return
    family = GaugeMetricFamily("eca_serve_gpu_memory_bytes", "CUDA memory allocated by torch", labels=["device"])
    for index in range(torch.cuda.device_count()):
        family.add_metric([f"cuda:{index}"], torch.cuda.memory_allocated(index))
    yield family
