"""The Open Inference Protocol (KServe V2) over gRPC, so that `tritonclient.grpc` works unchanged.

    inference.proto   the part of the protocol we serve, wire-compatible (its names and field numbers)
    inference_pb.py   its compiled descriptor (generated: `make grpc-proto`, service/grpc/generate.py)
    messages.py       the message classes, in a descriptor pool of our own
    codec.py          protobuf tensors <-> numpy (raw bytes or typed contents)
    servicer.py       the methods: a thin adapter over service.v2.dataplane, which HTTP's V2 router shares
    server.py         grpc.aio's server in the app's event loop, for the span of its lifespan
"""
