"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``), served next to the HTTP API.

`protocol` holds the messages, `tensors` translates them to the v2 infer request the HTTP path uses,
`service` answers the RPCs and `server` runs grpc.aio on the HTTP server's event loop.
"""
