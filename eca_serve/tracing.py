"""Tracing hooks for the serving stack, and the ``OTEL_*`` settings: no OpenTelemetry import here.

The pipelines call the module functions below (`stage`, `capture`, `queue_wait`, `batch`, `annotate`);
they do nothing until `install` receives an implementation (`eca_serve.api.tracing` with OpenTelemetry),
so a server without tracing pays one global lookup per call and imports no tracing library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

Attributes = Mapping[str, Any]


class TraceHooks(Protocol):
    """What the pipelines report; ``context`` objects are opaque to them (a span context here)."""

    def stage(self, name: str, attributes: Attributes) -> AbstractContextManager[None]:
        """A child span of the current request's span around a stage (decode, postprocess)."""

    def capture(self) -> object | None:
        """The current request's span context, if it is being recorded (else None: nothing to link)."""

    def queue_wait(self, context: object, start: float, end: float, attributes: Attributes) -> None:
        """A finished child span of ``context`` from ``start`` to ``end`` (``time.perf_counter`` seconds)."""

    def batch(self, contexts: Sequence[object], attributes: Attributes) -> AbstractContextManager[None]:
        """One span around a batch's execution, linked to every request's span in ``contexts``."""

    def annotate(self, attributes: Attributes) -> None:
        """Set attributes on the current request's span."""


_NULL: AbstractContextManager[None] = contextlib.nullcontext()
_hooks: TraceHooks | None = None


def install(hooks: TraceHooks | None) -> None:
    """Route the module functions to ``hooks`` (None: tracing off again)."""
    global _hooks
    _hooks = hooks


def installed() -> TraceHooks | None:
    """The hooks in force, if any."""
    return _hooks


def stage(name: str, attributes: Attributes) -> AbstractContextManager[None]:
    """See `TraceHooks.stage`; a shared no-op context while tracing is off."""
    return _NULL if _hooks is None else _hooks.stage(name, attributes)


def capture() -> object | None:
    """See `TraceHooks.capture`; None while tracing is off."""
    return None if _hooks is None else _hooks.capture()


def queue_wait(context: object | None, start: float, end: float, attributes: Attributes) -> None:
    """See `TraceHooks.queue_wait`; nothing for a request that is not recorded."""
    if _hooks is not None and context is not None:
        _hooks.queue_wait(context, start, end, attributes)


def batch(contexts: Sequence[object | None], attributes: Attributes) -> AbstractContextManager[None]:
    """See `TraceHooks.batch`; a no-op unless at least one request of the batch is recorded."""
    recorded = [c for c in contexts if c is not None]
    return _NULL if _hooks is None or not recorded else _hooks.batch(recorded, attributes)


def annotate(attributes: Attributes) -> None:
    """See `TraceHooks.annotate`."""
    if _hooks is not None:
        _hooks.annotate(attributes)


EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")


@dataclass(frozen=True)
class TracingConfig:
    """The standard ``OTEL_*`` variables eca-serve reads (the OTLP exporters read their own others).

    Attributes:
        exporter: ``OTEL_TRACES_EXPORTER``: otlp (default), console or none (spans made, not exported).
        endpoint: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` (plus ``/v1/traces``
            over HTTP); None: the exporter's default.
        protocol: ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``: http/protobuf (default) or grpc.
        sampler: ``OTEL_TRACES_SAMPLER`` (default parentbased_always_on).
        ratio: ``OTEL_TRACES_SAMPLER_ARG`` for the ratio samplers, in [0, 1] (default 1).
        service_name: ``OTEL_SERVICE_NAME`` (default eca-serve).
    """

    exporter: str = "otlp"
    endpoint: str | None = None
    protocol: str = "http/protobuf"
    sampler: str = "parentbased_always_on"
    ratio: float = 1.0
    service_name: str = "eca-serve"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TracingConfig:
        """Parse ``env`` (e.g. ``os.environ``); raises ValueError naming the variable and its valid values."""
        exporter = _choice(env, "OTEL_TRACES_EXPORTER", EXPORTERS, cls.exporter)
        protocol = _choice(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", PROTOCOLS,
                           _choice(env, "OTEL_EXPORTER_OTLP_PROTOCOL", PROTOCOLS, cls.protocol))
        sampler = _choice(env, "OTEL_TRACES_SAMPLER", SAMPLERS, cls.sampler)
        return cls(exporter, _endpoint(env, protocol), protocol, sampler, _ratio(env, sampler),
                   env.get("OTEL_SERVICE_NAME") or cls.service_name)


def _endpoint(env: Mapping[str, str], protocol: str) -> str | None:
    """The traces endpoint: the signal's own variable as given; the base one gains ``/v1/traces`` over HTTP (per the spec)."""
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    return base if protocol == "grpc" else base.rstrip("/") + "/v1/traces"


def _choice(env: Mapping[str, str], name: str, valid: tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(valid)}")
    return value


def _ratio(env: Mapping[str, str], sampler: str) -> float:
    raw = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not raw or not sampler.endswith("traceidratio"):
        return 1.0
    try:
        ratio = float(raw)
    except ValueError:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} must be a number in [0, 1]") from None
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} must be in [0, 1]")
    return ratio
