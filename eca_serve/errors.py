"""One exception hierarchy, grouped by meaning; only `eca_serve.api` maps the groups to status codes.

The four groups a serving front end answers differently:

- `ClientError`: the request is wrong (HTTP 4xx, gRPC INVALID_ARGUMENT / NOT_FOUND / RESOURCE_EXHAUSTED).
- `UnavailableError`: the request may succeed later (HTTP 503 with Retry-After, gRPC UNAVAILABLE).
- `RequestTimeoutError`: not answered in time (HTTP 504, gRPC DEADLINE_EXCEEDED).
- `ServerFault`: the server is misconfigured or broke a contract (HTTP 500, gRPC INTERNAL); its message
  is logged with the request id and never sent to the client.

Errors of the offline tools (export, training, checkpoints) use `ConfigError` and `CheckpointError`.
"""

from __future__ import annotations


class EcaServeError(Exception):
    """Base class of every error eca-serve raises on purpose."""


# --- the client's mistakes -------------------------------------------------------------------------


class ClientError(EcaServeError):
    """Something in the request is wrong; the message tells the client what."""


class InvalidParameterError(ClientError, ValueError):
    """A request parameter or field that breaks a stated rule (``top_k`` out of range, no image, ...)."""


class InferenceRequestError(InvalidParameterError):
    """A malformed inference request: bad JSON, tensor shape/datatype/size mismatch, unknown input or output."""


class UnknownModelError(ClientError, KeyError):
    """A model name that is not registered or not in the model repository."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WrongTaskError(InvalidParameterError):
    """An endpoint called on a model of another task (e.g. ``detect`` on a classifier)."""

    @classmethod
    def for_model(cls, name: str, task: str, action: str) -> WrongTaskError:
        """The error for model ``name`` of ``task`` asked to ``action``."""
        return cls(f"model {name!r} is {with_article(task)} model; it does not {action}")


def with_article(word: str) -> str:
    """``word`` after "a" or "an" ("an instance_segmentation", "a classification")."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


class NoDriftReferenceError(ClientError):
    """Drift scores asked of a model whose entry has no attention reference summary."""


class InvalidImageError(ClientError):
    """An upload that is not an image of an accepted format, or is corrupt or truncated."""


class UnsupportedMediaTypeError(ClientError):
    """A request whose declared content type cannot carry an image (e.g. ``text/plain``)."""


class TooLargeError(ClientError):
    """A request over a size limit (bytes, pixels, images per request)."""


class ImageTooLargeError(TooLargeError):
    """An upload over a size limit: too many bytes, too many pixels or too long a side (decompression bombs)."""


class TooManyImagesError(TooLargeError):
    """More images (or tensor rows) in one request than the configured limit."""


# --- try again later -------------------------------------------------------------------------------


class UnavailableError(EcaServeError):
    """The request cannot be served now but may be later (503 + Retry-After)."""


class NotReadyError(UnavailableError):
    """The model exists but is still loading, unloading, or its worker is being restarted."""


class QueueFullError(UnavailableError):
    """A bounded request queue is full; the request was rejected at once and may be retried later."""


class ShuttingDownError(UnavailableError):
    """The component is stopping (or stopped) and no longer accepts or finishes this request."""


# --- too slow ----------------------------------------------------------------------------------------


class RequestTimeoutError(EcaServeError, TimeoutError):
    """A request was not answered within its timeout (time queued plus time executing)."""


# --- the server's fault ------------------------------------------------------------------------------


class ServerFault(EcaServeError):
    """The server is misconfigured or a component broke its contract (500, message logged, not sent)."""


class ConfigError(ServerFault, ValueError):
    """Arguments or configuration values that break a stated rule (settings, config.json, CLI options)."""


class BatchResultError(ServerFault, RuntimeError):
    """A batch handler broke its contract: it must return exactly one result per item, in order."""


class CheckpointError(EcaServeError, ValueError):
    """A checkpoint that cannot be read or does not match the architecture."""
