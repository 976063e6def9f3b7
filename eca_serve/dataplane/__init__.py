"""The data plane: what every serving protocol asks of the models, answered once (KServe's DataPlane).

Model lookup, version resolution, readiness, statistics selection, refusal and inference dispatch live in
`DataPlane`; v1 and v2 HTTP and gRPC only translate their requests to its calls and its typed errors
(`eca_serve.errors`) to their statuses. It knows no web or RPC framework.
"""

from eca_serve.dataplane.plane import DataPlane, InflightLimitError, Readiness, parse_version

__all__ = ["DataPlane", "InflightLimitError", "Readiness", "parse_version"]
