"""Bearer credentials: API keys for the ingestion API, a token for the twin service's API.

Keys are configured as a comma-separated list (``COREPAY_API_KEYS``). Each entry is a key
itself or its hashed form ``sha256:<64 hex digits>`` (see :func:`hash_key`), so a deployment
can keep only hashes in its configuration. A presented key is hashed and compared with every
configured hash with :func:`hmac.compare_digest`, all of them, whatever matched: the time a
check takes does not depend on which key, or how much of one, was right.

Nothing here logs or returns a key; :class:`Credentials` does not show them in its repr.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from corepay.errors import ConfigurationError

__all__ = ["Credentials", "bearer_token", "hash_key"]

_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")
#: Shortest key accepted in configuration: a short key can be guessed.
MIN_KEY_LENGTH = 16


def hash_key(key: str) -> str:
    """The hashed form of a key, ``sha256:<hex>``, to put in configuration instead of it."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Credentials:
    """A set of accepted bearer keys.

    Args:
        entries: keys, or ``sha256:<hex>`` hashes of keys.
        what: what they are called in error messages (``COREPAY_API_KEYS``).

    Raises:
        ConfigurationError: an entry is too short to be a key and not a hash; the message
            says which entry by position, never its value.
    """

    def __init__(self, entries: list[str] | tuple[str, ...], *, what: str = "keys") -> None:
        digests = []
        for position, raw in enumerate(entries, start=1):
            entry = raw.strip()
            if not entry:
                continue
            hashed = _HASHED.fullmatch(entry)
            if hashed:
                digests.append(bytes.fromhex(hashed.group(1)))
            elif entry.startswith("sha256:"):
                raise ConfigurationError(
                    f"{what}: entry {position} starts with sha256: but is not 64 hex digits"
                )
            elif len(entry) < MIN_KEY_LENGTH:
                raise ConfigurationError(
                    f"{what}: entry {position} is shorter than {MIN_KEY_LENGTH} characters; "
                    "use a long random key (python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')"
                )
            else:
                digests.append(hashlib.sha256(entry.encode()).digest())
        if not digests:
            raise ConfigurationError(f"{what}: no keys given")
        self._digests = tuple(digests)
        self.what = what

    @classmethod
    def parse(cls, text: str | None, *, what: str) -> Credentials | None:
        """Credentials from a comma-separated setting; ``None`` when it is unset or empty."""
        if text is None or not text.strip():
            return None
        return cls(text.split(","), what=what)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"Credentials({self.what}, {len(self._digests)} keys)"

    def accepts(self, key: str | None) -> bool:
        """Whether ``key`` is one of the accepted keys (constant time in the keys' content)."""
        presented = hashlib.sha256((key or "").encode()).digest()
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched and key is not None

    def accepts_header(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries an accepted bearer key."""
        return self.accepts(bearer_token(authorization))
