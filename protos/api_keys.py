"""API keys on every gRPC entry point: the server interceptor, and the metadata clients send.

Clients send `authorization: Bearer <key>` with each call. Servers hold only the SHA-256 of each
key (config `auth.api_key_hashes`): they hash what a caller presents and compare digests with
`hmac.compare_digest`, so neither a leaked config nor the comparison's timing gives a key away.
The check runs once per RPC, when the call is routed, never per streamed message.

Health checks and reflection stay open: Kubernetes probes and `grpcurl list` carry no key.
Gateways, replicas and the EventBus all install `ApiKeyInterceptor`; this module lives in
`protos/` so that foreground replicas can import it without the rest of the cluster.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

import grpc

AUTHORIZATION = "authorization"  # gRPC metadata keys are lower case
BEARER = "Bearer "
OPEN_METHODS = (  # method-name prefixes anyone may call
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
HOW_TO_SEND = ("send gRPC metadata `authorization: Bearer <key>` (microturn's CLI and client SDK read "
               "MICROTURN_API_KEY, then the key file `microturn up` prints)")


def hash_api_key(key: str) -> str:
    """What a server stores for `key`: its SHA-256, as 64 hex digits (`printf %s KEY | sha256sum`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_metadata(key: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries `key`; none without a key."""
    return ((AUTHORIZATION, BEARER + key),) if key else ()


def presented_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The key a call presents in `authorization: Bearer <key>`; None if none, or malformed."""
    value = _authorization(metadata)
    if value is None:
        return None
    scheme, _, key = value.strip().partition(" ")
    if scheme.lower() != BEARER.strip().lower() or not key.strip():  # the scheme is case-insensitive
        return None
    return key.strip()


def _authorization(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    values = [v for k, v in metadata or () if k == AUTHORIZATION]
    if not values:
        return None
    return values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")


class ApiKeys:
    """The keys a server accepts, by digest. With `required=False` every call passes (a
    trusted network: `auth.disabled`); with no digests and `required`, every call is refused."""

    def __init__(self, hashes: Iterable[str], required: bool = True) -> None:
        self.digests = tuple(bytes.fromhex(h) for h in hashes)
        self.required = required

    def refusal(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """Why a call with this metadata is refused, or None when it may go on."""
        if not self.required:
            return None
        if not self.digests:
            return "this server accepts no API key yet: set auth.api_key_hashes (MICROTURN_AUTH_API_KEY_HASHES)"
        if _authorization(metadata) is None:
            return f"missing API key: {HOW_TO_SEND}"
        key = presented_key(metadata)
        if key is None:
            return "authorization: expected `Bearer <key>`"
        presented = hashlib.sha256(key.encode()).digest()
        matched = False
        for digest in self.digests:  # no early exit: every key costs the same
            matched |= hmac.compare_digest(presented, digest)
        return None if matched else "the API key is not valid for this cluster"


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health and reflection with UNAUTHENTICATED unless it carries a key
    from `keys`."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHODS):
            return handler
        reason = self.keys.refusal(handler_call_details.invocation_metadata)
        return handler if reason is None else _refusing(handler, reason)


def _refusing(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that fails the call with UNAUTHENTICATED."""

    async def unary_response(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    async def streamed_response(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        yield  # never reached: makes this an async generator, as streaming handlers are

    make = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[(handler.request_streaming,
                                                                  handler.response_streaming)]
    behaviour = streamed_response if handler.response_streaming else unary_response
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
