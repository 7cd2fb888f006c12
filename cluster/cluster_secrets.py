"""What a cluster must be given before it starts: real secrets, and API keys.

`deploy/base/secrets.yaml` ships `CHANGE-ME` placeholders. A pod started from them would run
with a guessable Redis password or Ray token, so the gateway and the Serve apps refuse to start
while any environment variable still holds one, naming the variable (never its value). On a
cluster, an unset `auth.api_key_hashes` is refused too, unless `auth.disabled` says that the
network is trusted: only `microturn up` makes a key of its own (`cluster.local_api_key`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cluster.config import ConfigError, MicroturnConfig
from protos.api_keys import ApiKeys

PLACEHOLDER = "CHANGE-ME"


def refuse_placeholders(environ: Mapping[str, str] = os.environ) -> None:
    """Raise `ConfigError` naming every variable whose value still holds `CHANGE-ME`."""
    names = sorted(name for name, value in environ.items() if PLACEHOLDER in value)
    if names:
        raise ConfigError(f"{', '.join(names)}: still the {PLACEHOLDER} placeholder of deploy/base/secrets.yaml; "
                          "put real values in the Secrets (one you do not use can be any other text) "
                          "and restart")


def cluster_api_keys(config: MicroturnConfig) -> ApiKeys:
    """The keys a cluster's servers accept; none configured and not disabled is an error."""
    auth = config.auth
    if not auth.api_key_hashes and not auth.disabled:
        raise ConfigError("auth.api_key_hashes is unset: set MICROTURN_AUTH_API_KEY_HASHES to the SHA-256 of "
                          "each client key (deploy/: Secret microturn-api-keys, key client-api-key-hashes), "
                          "or auth.disabled: true on a network you trust")
    return ApiKeys(auth.api_key_hashes, required=not auth.disabled)
