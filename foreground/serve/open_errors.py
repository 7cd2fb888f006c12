"""Why opening (or reopening) a session fails, as exceptions the session port turns into statuses.

Shared by the host (new sessions, resumes) and the restore path (`session_restore`), and read by
`interaction_service` and the deployment, which map each to a gRPC status.
"""

from __future__ import annotations

import hmac


class SessionNotFound(KeyError):
    pass


class WrongToken(PermissionError):
    pass


class SessionElsewhere(RuntimeError):
    """The session is held by another replica that is alive (`address`): not restored here."""

    def __init__(self, message: str, address: str = "") -> None:
        super().__init__(message)
        self.address = address


class BusUnavailable(ConnectionError):
    """Redis could not be reached (after the client's own retries) for something a request
    cannot do without: the caller should retry later, or elsewhere."""


def check_token(expected: str, given: str) -> None:
    """Compared in constant time: how long a refusal takes says nothing about the token."""
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise WrongToken("the token does not match this session")
