"""The local API key: `microturn up` keeps one in a file, and clients on the same machine find it.

A local cluster with no `auth.api_key_hashes` configured accepts one key: `MICROTURN_API_KEY`
when that is set, else the key in `auth.key_file` (`$XDG_CONFIG_HOME/microturn/api_key`, by
default `~/.config/microturn/api_key`), created on first use with mode 0600 in a 0700 folder.
Clients look in the same order, so `microturn talk`, `demo`, `bench` and the SDK need no copying.
Only the file's path is ever printed or logged, never the key.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

API_KEY_ENV = "MICROTURN_API_KEY"
KEY_FILE_ENV = "MICROTURN_AUTH_KEY_FILE"  # the config key auth.key_file, read by SDK users without a config


def default_key_file() -> Path:
    """Per user, not per checkout: `up` in one folder and `talk` in another share it."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "microturn" / "api_key"


def find_api_key(key_file: Path | None = None) -> str | None:
    """The key a client on this machine should send: MICROTURN_API_KEY, then the key file
    (`key_file`, else MICROTURN_AUTH_KEY_FILE, else the default); None when neither has one."""
    if key := os.environ.get(API_KEY_ENV, "").strip():
        return key
    path = key_file or Path(os.environ.get(KEY_FILE_ENV) or default_key_file())
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def local_api_key(key_file: Path) -> tuple[str, str]:
    """The key a local cluster accepts, and where it came from (for the endpoints' printout):
    MICROTURN_API_KEY, else `key_file`, written with a fresh key when missing."""
    if key := os.environ.get(API_KEY_ENV, "").strip():
        return key, f"from {API_KEY_ENV}"
    if existing := find_api_key(key_file):
        if key_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users: chmod 600 it", key_file)
        return existing, str(key_file)
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = "mt_" + secrets.token_urlsafe(32)
    # O_EXCL: two `up`s racing cannot both write; 0600 from the start, never readable by others.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    log.info("created a local API key in %s", key_file)
    return key, str(key_file)
