"""Wire protocol: `microturn.v1` messages and services, with committed generated stubs.

Import the generated modules from `protos.microturn.v1`, e.g.
`from protos.microturn.v1 import interaction_pb2, interaction_pb2_grpc`. Beside them, what
every side of the wire shares: `event_bus` and `job_stream` (Redis streams), `api_keys` (the
key check on every gRPC server), `standard_services` (health and reflection).
"""
