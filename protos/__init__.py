"""Wire protocol: `microturn.v1` messages and services, with committed generated stubs.

Import the generated modules from `protos.microturn.v1`, e.g.
`from protos.microturn.v1 import interaction_pb2, interaction_pb2_grpc`.
"""
