"""One exception hierarchy for every layer; only `eca_serve.api` maps these to HTTP status codes."""


class EcaServeError(Exception):
    """Base class of every error eca-serve raises on purpose."""


class UnknownModelError(EcaServeError, KeyError):
    """A model name that is not registered or not in the model repository."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(EcaServeError, ValueError):
    """Arguments or configuration values that break a stated rule."""


class CheckpointError(EcaServeError, ValueError):
    """A checkpoint that cannot be read or does not match the architecture."""
