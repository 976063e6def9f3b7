"""One exception hierarchy for every layer; only `eca_serve.api` maps these to HTTP status codes."""


class EcaServeError(Exception):
    """Base class of every error eca-serve raises on purpose."""


class UnknownModelError(EcaServeError, KeyError):
    """A model name that is not registered or not in the model repository."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(EcaServeError, ValueError):
    """Arguments or configuration values that break a stated rule."""


class InferenceRequestError(ConfigError):
    """A malformed inference request: bad JSON, tensor shape/datatype/size mismatch, unknown input or output."""


class CheckpointError(EcaServeError, ValueError):
    """A checkpoint that cannot be read or does not match the architecture."""


class QueueFullError(EcaServeError):
    """A bounded request queue is full; the request was rejected at once and may be retried later."""


class RequestTimeoutError(EcaServeError, TimeoutError):
    """A request was not answered within its timeout (time queued plus time executing)."""


class ShuttingDownError(EcaServeError):
    """The component is stopping (or stopped) and no longer accepts or finishes this request."""


class BatchResultError(EcaServeError, RuntimeError):
    """A batch handler broke its contract: it must return exactly one result per item, in order."""


class InvalidImageError(EcaServeError):
    """An upload that is not an image of an accepted format, or is corrupt or truncated."""


class UnsupportedMediaTypeError(EcaServeError):
    """A request whose declared content type cannot carry an image (e.g. ``text/plain``)."""


class ImageTooLargeError(EcaServeError):
    """An upload over a size limit: too many bytes, too many pixels or too long a side (decompression bombs)."""
