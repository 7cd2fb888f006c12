"""Optional TLS and mTLS on microturn's ports and channels, from certificate files named in config.

One place decides plaintext or TLS: every gRPC server (the gateway, each replica's session port)
binds with `add_port`, every gRPC client channel (the SDK, the gateway's relay to replicas,
health probes, replicas probing one another) comes from `open_channel`, and the Realtime HTTP
port takes `server_ssl_context`. `tls` is the config's `TlsConfig` (`cluster/config.py`); None
or off is plaintext, as on loopback. Files are read when a port or channel is made, so new
channels pick up a rotated certificate. This module lives in `protos/` so that replicas import
it without the rest of the cluster.

mTLS (`tls.require_client_cert`): servers ask every client for a certificate signed by
`tls.ca_file`, and a client without one fails the handshake (UNAVAILABLE) before its API key is
even read. Cluster processes are clients of one another (gateway -> replica, replica -> replica
health probes, the Realtime port -> its gateway) and present their own certificate, so it must
allow client authentication too (extendedKeyUsage serverAuth and clientAuth), or
`tls.client_cert_file` names another one.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from cluster.config import TlsConfig


class TlsError(ValueError):
    """A certificate or key named in config cannot be used; the message names the config key."""


def is_on(tls: TlsConfig | None) -> bool:
    return tls is not None and tls.on


def add_port(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> int:
    """Bind `address` on `server`, with TLS when it is on; the port bound (0: it could not bind)."""
    if not is_on(tls):
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(tls))


def open_channel(address: str, tls: TlsConfig | None) -> grpc.aio.Channel:
    """A channel to `address`: TLS (verifying the server, presenting a client certificate when
    one is configured) when it is on, plaintext otherwise."""
    if not is_on(tls):
        return grpc.aio.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=options)


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """The server's certificate and key; under mTLS also the CA that client certificates need."""
    _need_server_pair(tls)
    pair = (_read(tls.key_file, "key_file"), _read(tls.cert_file, "cert_file"))
    roots = _read(tls.ca_file, "ca_file") if tls.require_client_cert else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots,
                                       require_client_auth=tls.require_client_cert)


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """`ca_file` to verify servers (unset: the system's CAs), and the client's own pair if any."""
    cert_key, key_key = ("client_cert_file", "client_key_file") if tls.client_cert_file else ("cert_file", "key_file")
    return grpc.ssl_channel_credentials(root_certificates=_read(tls.ca_file, "ca_file"),
                                        private_key=_read(getattr(tls, key_key), key_key),
                                        certificate_chain=_read(getattr(tls, cert_key), cert_key))


def server_ssl_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """The same certificate for an HTTP server (HTTPS, WSS); None when TLS is off."""
    if not is_on(tls):
        return None
    _need_server_pair(tls)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.require_client_cert:
            context.load_verify_locations(cafile=tls.ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"tls.cert_file/key_file/ca_file ({tls.cert_file}, {tls.key_file}, {tls.ca_file}): "
                       f"cannot be used for HTTPS: {e}") from None
    return context


def _need_server_pair(tls: TlsConfig) -> None:
    if tls.cert_file is None or tls.key_file is None:
        raise TlsError("tls.cert_file and tls.key_file: a server needs its own certificate and key to "
                       "serve TLS (tls.ca_file alone makes only clients use TLS)")


def _read(path: Path | None, key: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TlsError(f"tls.{key}: cannot read {path}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"tls.{key}: {path} is not PEM (no -----BEGIN line)")
    return data
