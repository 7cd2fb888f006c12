"""The TLS settings a client in this process uses when its caller names none.

`microturn talk`, `demo` and the benches make their clients (`cluster.client.InteractionClient`)
deep inside code that knows only an address, as with the API key (`cluster.local_api_key`). So
the CLI states its config's `tls` section once (`use_client_tls`), and an SDK user without the
CLI gets the `MICROTURN_TLS_*` environment (and the defaults: plaintext).
"""

from __future__ import annotations

from cluster.config import TlsConfig, load_config

_configured: TlsConfig | None = None


def use_client_tls(tls: TlsConfig | None) -> None:
    """What clients of this process use from now on (None: the environment's again)."""
    global _configured
    _configured = tls


def client_tls() -> TlsConfig:
    """The CLI's config's `tls`, else `MICROTURN_TLS_*` from the environment."""
    return _configured if _configured is not None else load_config().tls
