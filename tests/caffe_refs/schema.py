"""A schema's messages as data: {message: {field: [number, label, type, type name,
default]}, enum: {value: number}}, from a generated *_pb2 module's descriptor. Used by
make_refs.py (on pycaffe's caffe_pb2) and by the tests (on the port's)."""


def describe(pb2_module):
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto()
    pb2_module.DESCRIPTOR.CopyToProto(proto)
    messages = {}

    def walk(message, prefix):
        name = prefix + message.name
        messages[name] = {f.name: [f.number, f.label, f.type, f.type_name, f.default_value] for f in message.field}
        for enum in message.enum_type:
            messages[f"{name}.{enum.name}"] = {v.name: v.number for v in enum.value}
        for nested in message.nested_type:
            walk(nested, name + ".")
    for message in proto.message_type:
        walk(message, "")
    for enum in proto.enum_type:
        messages[enum.name] = {v.name: v.number for v in enum.value}
    return messages
