"""The twin store interface: read a twin, replace it by compare-and-swap."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from corepay.models import Twin

__all__ = ["TwinStore"]


class TwinStore(ABC):
    """Where digital twins live (Couchbase, or its in-memory equivalent).

    Concurrent writers are safe: :meth:`compare_and_set` succeeds only if the stored twin is
    still the version the caller read, so a lost race surfaces as a
    :class:`~corepay.errors.ConflictError` instead of a lost update.
    """

    #: Whether twins outlive the process. A twin service on a store that does not rebuilds
    #: its twins from ``live_outcome`` when it starts (twins are a replayable fold of it).
    durable = True
    #: Whether reads wait on the network (the engine then overlaps its two paths).
    blocking = True

    @abstractmethod
    def get(self, customer_id: str) -> Twin | None:
        """The customer's twin, or ``None`` if there is none yet.

        Raises:
            UnavailableError, BackendTimeoutError: the store did not answer.
        """

    def get_many(self, customer_ids: Iterable[str]) -> dict[str, Twin]:
        """The twins that exist among ``customer_ids`` (backends may batch the reads)."""
        found = {}
        for customer_id in dict.fromkeys(customer_ids):
            twin = self.get(customer_id)
            if twin is not None:
                found[customer_id] = twin
        return found

    @abstractmethod
    def compare_and_set(self, twin: Twin, *, expected_version: int | None) -> None:
        """Store ``twin`` if the stored version is still ``expected_version``.

        ``expected_version=None`` means the customer must have no twin yet.

        Raises:
            ConflictError: the stored twin is not at ``expected_version`` (someone else wrote).
            UnavailableError, BackendTimeoutError: the store did not answer.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The store must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
