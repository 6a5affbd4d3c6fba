"""Every error CorePay raises, in one hierarchy.

Callers catch these, never a driver's exceptions: backends translate kafka-python and
couchbase errors at their boundary (``raise UnavailableError(...) from exc``).

::

    CorepayError
    ├── ValidationError (ValueError)      a payload breaks the wire format; lists each field
    ├── DecodeError (ValueError)          a message on the bus is not CorePay's format
    ├── ConfigurationError (ValueError)   a bad URL, an unknown scheme, a bad setting
    ├── ConflictError                     a compare-and-swap lost against a newer version
    ├── NotFoundError (LookupError)       no such twin (or other addressed thing)
    ├── CommitFailedError                 a consumer committed partitions it no longer owns
    ├── RejectedError                     a backend refused a request for good (too large...)
    └── BackendError                      a bus, store, gateway or service did not answer
        ├── UnavailableError              ... cannot take the request now; retrying may help
        └── BackendTimeoutError (TimeoutError)   ... did not answer within its deadline
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = [
    "BackendError",
    "BackendTimeoutError",
    "CommitFailedError",
    "ConfigurationError",
    "ConflictError",
    "CorepayError",
    "DecodeError",
    "FieldError",
    "NotFoundError",
    "RejectedError",
    "UnavailableError",
    "ValidationError",
]


class CorepayError(Exception):
    """Base of every error CorePay raises."""


@attrs.frozen
class FieldError:
    """One rule one field broke: ``field`` is a dotted path, ``message`` says the rule."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(CorepayError, ValueError):
    """A payload breaks the wire format. ``errors`` names each field and the rule it broke."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        super().__init__("; ".join(str(e) for e in self.errors) or "invalid payload")


class DecodeError(CorepayError, ValueError):
    """A message read from the bus is not in CorePay's wire format."""


class ConfigurationError(CorepayError, ValueError):
    """A URL, scheme or setting CorePay cannot use, with what would be accepted."""


class ConflictError(CorepayError):
    """A compare-and-swap update found a newer version than the one it was based on."""


class NotFoundError(CorepayError, LookupError):
    """The addressed thing (a twin, usually) does not exist."""


class CommitFailedError(CorepayError):
    """A consumer tried to commit partitions that were reassigned to another group member.

    The messages behind that commit will be redelivered to the partitions' new owner.
    """


class RejectedError(CorepayError):
    """A backend refused this request in a way retrying cannot fix (too large, invalid).

    Not a :class:`BackendError`: consumer services treat it like a poison message.
    """


class BackendError(CorepayError):
    """A bus, store, gateway or peer service failed to do what was asked."""


class UnavailableError(BackendError):
    """The backend cannot take the request now (down, unreachable, overloaded)."""


class BackendTimeoutError(BackendError, TimeoutError):
    """The backend did not answer within its deadline; the outcome is unknown."""
