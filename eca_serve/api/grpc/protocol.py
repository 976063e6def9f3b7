"""The ``inference`` protobuf messages, from the descriptor set compiled out of ``inference.proto``.

NOTE: no generated ``*_pb2.py`` and no protoc at run time. ``inference.proto`` is compiled once (by a
developer, with grpcio-tools) into ``inference.binpb``, a serialized FileDescriptorSet shipped as package
data; at import the messages are built from it in a private descriptor pool. So serving needs only
``protobuf`` (no grpcio-tools, nothing written at run time: read-only containers work), and the private
pool keeps our ``inference.*`` names apart from tritonclient's, which registers the same names in the
default pool (both can live in one process). `tests/test_grpc_protocol.py` fails when ``inference.binpb``
is stale and when a field number differs from tritonclient's.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"
PROTO = Path(__file__).with_name("inference.proto")
DESCRIPTORS = Path(__file__).with_name("inference.binpb")


@lru_cache(maxsize=1)
def messages() -> SimpleNamespace:
    """Every message class of the package by its short name (``messages().ModelInferRequest``)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    classes = {}
    for proto in files.file:
        for message in proto.message_type:
            descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.{message.name}")
            classes[message.name] = message_factory.GetMessageClass(descriptor)
    return SimpleNamespace(**classes)


@lru_cache(maxsize=1)
def rpc_types() -> dict[str, tuple[type, type]]:
    """(request class, response class) of each RPC of the service, by method name."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())
    return {m.name: (_message(m.input_type), _message(m.output_type))
            for proto in files.file for service in proto.service for m in service.method}


def _message(full_name: str) -> type:
    """The class of a message type named as descriptors name it (``.inference.ModelInferRequest``)."""
    return getattr(messages(), full_name.rsplit(".", 1)[-1])


def compile_proto(proto: Path = PROTO) -> bytes:
    """``proto`` compiled by grpcio-tools' protoc into a serialized FileDescriptorSet (development only).

    Raises:
        RuntimeError: protoc reported an error.
    """
    import tempfile

    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "set.binpb"
        status = protoc.main(["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", proto.name])
        if status != 0:
            raise RuntimeError(f"protoc failed on {proto} with status {status}")
        return out.read_bytes()


if __name__ == "__main__":
    DESCRIPTORS.write_bytes(compile_proto())
    print(f"wrote {DESCRIPTORS}")
