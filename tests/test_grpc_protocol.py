"""The shipped ``inference`` messages: fresh from the .proto, and wire-compatible with tritonclient's."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from eca_serve.api.grpc.protocol import DESCRIPTORS, PACKAGE, SERVICE, compile_proto, messages, rpc_types


def _shipped() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes())


def test_descriptor_set_is_compiled_from_the_current_proto() -> None:
    pytest.importorskip("grpc_tools")
    fresh = descriptor_pb2.FileDescriptorSet.FromString(compile_proto())
    assert fresh == _shipped(), "inference.binpb is stale: run python -m eca_serve.api.grpc.protocol"


def _all_messages(proto: descriptor_pb2.FileDescriptorProto) -> list[tuple[str, descriptor_pb2.DescriptorProto]]:
    found, todo = [], [(f"{PACKAGE}.{m.name}", m) for m in proto.message_type]
    while todo:
        name, message = todo.pop()
        found.append((name, message))
        todo += [(f"{name}.{n.name}", n) for n in message.nested_type if not n.options.map_entry]
    return found


def test_every_field_matches_tritonclient() -> None:
    pytest.importorskip("tritonclient.grpc")
    import tritonclient.grpc  # noqa: F401 - registers Triton's inference.* in the default pool

    theirs = descriptor_pool.Default()
    checked = 0
    for proto in _shipped().file:
        for name, message in _all_messages(proto):
            other = theirs.FindMessageTypeByName(name)
            for field in message.field:
                twin = other.fields_by_number.get(field.number)
                assert twin is not None, f"{name}.{field.name} = {field.number}: no such field number in Triton's proto"
                assert (twin.name, twin.type) == (field.name, field.type), f"{name}.{field.name} differs from Triton's"
                if field.type_name:
                    assert "." + (twin.message_type or twin.enum_type).full_name == field.type_name
                checked += 1
    assert checked > 100


def test_enum_values_match_tritonclient() -> None:
    pytest.importorskip("tritonclient.grpc")
    import tritonclient.grpc  # noqa: F401

    theirs = descriptor_pool.Default()
    enums = [(f"{PACKAGE}.{e.name}", e) for f in _shipped().file for e in f.enum_type]
    enums += [(f"{name}.{e.name}", e) for f in _shipped().file for name, m in _all_messages(f) for e in m.enum_type]
    assert enums
    for name, enum in enums:
        other = theirs.FindEnumTypeByName(name)
        assert {v.name: v.number for v in enum.value}.items() <= {v.name: v.number for v in other.values}.items(), name


def test_service_methods_match_tritonclient() -> None:
    pytest.importorskip("tritonclient.grpc")
    import tritonclient.grpc  # noqa: F401

    service = descriptor_pool.Default().FindServiceByName(SERVICE)
    for name, (request, response) in rpc_types().items():
        method = service.methods_by_name[name]
        assert method.input_type.full_name == request.DESCRIPTOR.full_name
        assert method.output_type.full_name == response.DESCRIPTOR.full_name


def test_messages_live_in_a_private_pool() -> None:
    assert messages().ModelInferRequest.DESCRIPTOR.file.pool is not descriptor_pool.Default()
