"""Dynamic batching of concurrent requests per model; knows nothing of models, tensors or HTTP."""

from eca_serve.batching.batcher import DynamicBatcher
from eca_serve.batching.policy import BatchPolicy
from eca_serve.batching.records import BatcherStats
from eca_serve.errors import BatchResultError, QueueFullError, RequestTimeoutError, ShuttingDownError

__all__ = [
    "BatchPolicy",
    "BatchResultError",
    "BatcherStats",
    "DynamicBatcher",
    "QueueFullError",
    "RequestTimeoutError",
    "ShuttingDownError",
]
