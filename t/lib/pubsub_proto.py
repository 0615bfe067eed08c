"""Salesforce's Pub/Sub API messages (eventbus.v1) for the tests, no protoc.

The messages of pubsub_api.proto (github.com/forcedotcom/pub-sub-api) that
t/lib/mock_pubsub.py and t/lib/pubsub_client.py speak, with the same names,
types and field numbers, built at run time from a FileDescriptorProto with
Debian's python3-protobuf (run with /usr/bin/python3):

    from pubsub_proto import PB, to_dict, METHODS
    req = PB.FetchRequest(topic_name="/event/Order__e",
                          replay_preset=PB.EARLIEST, num_requested=10)
    data = req.SerializeToString()

PB has a class for each message (TopicRequest, TopicInfo, SchemaRequest,
SchemaInfo, PublishRequest, ProducerEvent, EventHeader, PublishResponse,
PublishResult, Error, FetchRequest, FetchResponse, ConsumerEvent) and the
values of the enums ReplayPreset (LATEST, EARLIEST, CUSTOM) and ErrorCode
(UNKNOWN, PUBLISH, COMMIT).  METHODS maps each method of the service
eventbus.v1.PubSub to its request and response classes.  to_dict gives a
message as a dict for JSON: every field, its default too, bytes in hex and
enums by name.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "eventbus.v1"
SERVICE = PACKAGE + ".PubSub"

F = descriptor_pb2.FieldDescriptorProto
STRING, BYTES, BOOL, INT32 = (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_BOOL,
                              F.TYPE_INT32)

# message: [(field, number, scalar type or the name of a message or enum,
#            True if repeated)]
MESSAGES = {
    "TopicInfo": [("topic_name", 1, STRING), ("tenant_guid", 2, STRING),
                  ("can_publish", 3, BOOL), ("can_subscribe", 4, BOOL),
                  ("schema_id", 5, STRING), ("rpc_id", 6, STRING)],
    "TopicRequest": [("topic_name", 1, STRING)],
    "EventHeader": [("key", 1, STRING), ("value", 2, BYTES)],
    "ProducerEvent": [("id", 1, STRING), ("schema_id", 2, STRING),
                      ("payload", 3, BYTES),
                      ("headers", 4, "EventHeader", True)],
    "ConsumerEvent": [("event", 1, "ProducerEvent"),
                      ("replay_id", 2, BYTES)],
    "PublishResult": [("replay_id", 1, BYTES), ("error", 2, "Error"),
                      ("correlation_key", 3, STRING)],
    "Error": [("code", 1, "ErrorCode"), ("msg", 2, STRING)],
    "FetchRequest": [("topic_name", 1, STRING),
                     ("replay_preset", 2, "ReplayPreset"),
                     ("replay_id", 3, BYTES), ("num_requested", 4, INT32),
                     ("auth_refresh", 5, STRING)],
    "FetchResponse": [("events", 1, "ConsumerEvent", True),
                      ("latest_replay_id", 2, BYTES), ("rpc_id", 3, STRING),
                      ("pending_num_requested", 4, INT32)],
    "SchemaRequest": [("schema_id", 1, STRING)],
    "SchemaInfo": [("schema_json", 1, STRING), ("schema_id", 2, STRING),
                   ("rpc_id", 3, STRING)],
    "PublishRequest": [("topic_name", 1, STRING),
                       ("events", 2, "ProducerEvent", True),
                       ("auth_refresh", 3, STRING)],
    "PublishResponse": [("results", 1, "PublishResult", True),
                        ("schema_id", 2, STRING), ("rpc_id", 3, STRING)],
}

ENUMS = {
    "ErrorCode": [("UNKNOWN", 0), ("PUBLISH", 1), ("COMMIT", 2)],
    "ReplayPreset": [("LATEST", 0), ("EARLIEST", 1), ("CUSTOM", 2)],
}

# method: (request, response, client streams, server streams)
RPCS = {
    "Subscribe": ("FetchRequest", "FetchResponse", True, True),
    "GetSchema": ("SchemaRequest", "SchemaInfo", False, False),
    "GetTopic": ("TopicRequest", "TopicInfo", False, False),
    "Publish": ("PublishRequest", "PublishResponse", False, False),
    "PublishStream": ("PublishRequest", "PublishResponse", True, True),
}


def _file():
    fd = descriptor_pb2.FileDescriptorProto(
        name="eventbus/v1/pubsub_api.proto", package=PACKAGE,
        syntax="proto3")
    for name, values in ENUMS.items():
        enum = fd.enum_type.add(name=name)
        for vname, number in values:
            enum.value.add(name=vname, number=number)
    for name, fields in MESSAGES.items():
        msg = fd.message_type.add(name=name)
        for spec in fields:
            fname, number, ftype = spec[:3]
            field = msg.field.add(name=fname, number=number,
                                  json_name=_camel(fname))
            field.label = (F.LABEL_REPEATED if len(spec) > 3 and spec[3]
                           else F.LABEL_OPTIONAL)
            if isinstance(ftype, str):
                field.type_name = ".%s.%s" % (PACKAGE, ftype)
                field.type = F.TYPE_ENUM if ftype in ENUMS else F.TYPE_MESSAGE
            else:
                field.type = ftype
    service = fd.service.add(name="PubSub")
    for name, (req, res, cs, ss) in RPCS.items():
        service.method.add(name=name, input_type=".%s.%s" % (PACKAGE, req),
                           output_type=".%s.%s" % (PACKAGE, res),
                           client_streaming=cs, server_streaming=ss)
    return fd


def _camel(name):
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


class _Namespace:
    pass


def _build():
    pool = descriptor_pool.DescriptorPool()
    fdesc = pool.AddSerializedFile(_file().SerializeToString())
    pb = _Namespace()
    for name in MESSAGES:
        desc = fdesc.message_types_by_name[name]
        if hasattr(message_factory, "GetMessageClass"):
            cls = message_factory.GetMessageClass(desc)
        else:
            cls = message_factory.MessageFactory(pool).GetPrototype(desc)
        setattr(pb, name, cls)
    for name, values in ENUMS.items():
        for vname, number in values:
            setattr(pb, vname, number)
    return pb, fdesc


PB, FILE = _build()

METHODS = {name: (getattr(PB, req), getattr(PB, res), cs, ss)
           for name, (req, res, cs, ss) in RPCS.items()}


def to_dict(msg):
    """MSG as a dict: every field, bytes in hex, enums by name."""
    out = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.label == field.LABEL_REPEATED:
            out[field.name] = [_value(field, v) for v in value]
        elif (field.type == field.TYPE_MESSAGE
              and not msg.HasField(field.name)):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


def _value(field, value):
    if field.type == field.TYPE_MESSAGE:
        return to_dict(value)
    if field.type == field.TYPE_BYTES:
        return value.hex()
    if field.type == field.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value
