"""Who may call the gateway: bearer tokens, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["TokenCheck"]


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests hides the tokens' lengths as well as their contents.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenCheck:
    """Accepts ``Authorization: Bearer <token>`` for any of ``tokens``.

    With ``allow_unauthenticated`` every request is accepted. Each check
    compares against every token, without stopping at a match, so the time it
    takes says nothing about which token (or how much of one) matched.
    """

    __slots__ = ("_digests", "open")

    def __init__(self, tokens: Sequence[str], *, allow_unauthenticated: bool = False) -> None:
        self._digests = tuple(_digest(token) for token in tokens)
        self.open = allow_unauthenticated and not tokens

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries a valid token."""
        if self.open:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        presented = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(digest, presented)
        return matched
