"""The digital twin service: applies live outcomes to twins (its HTTP API: ``twin_api``).

Updates are a compare-and-swap loop: read the twin, apply the outcomes (a pure function), store
it if nobody wrote in between, otherwise read again. Applying an outcome twice changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from corepay.bus import LIVE_OUTCOME, Bus, Message, Record
from corepay.errors import BackendError, ConfigurationError, ConflictError, DecodeError
from corepay.models import Outcome, Path
from corepay.observability import TWIN_UPDATE_CONFLICTS
from corepay.services.runner import ConsumerService, Handled, dead_letter
from corepay.store import TwinStore
from corepay.twin import TwinPolicy, apply_outcomes
from corepay.wire import outcome_of

__all__ = ["TwinService", "update_twin"]

log = logging.getLogger(__name__)


def update_twin(
    store: TwinStore,
    customer_id: str,
    outcomes: Sequence[Outcome],
    *,
    policy: TwinPolicy = TwinPolicy(),
    max_attempts: int = 10,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, int]:
    """Apply one customer's live outcomes to their twin with compare-and-swap.

    A conflict (another writer got there first) re-reads and re-applies; a store that fails
    transiently is retried with a short backoff. Returns whether the twin changed, and how
    many conflicts were retried.

    Raises:
        ConflictError: still conflicting after ``max_attempts`` reads.
        UnavailableError, BackendTimeoutError: the store kept failing ``max_attempts`` times.
    """
    conflicts = 0
    for attempt in range(max_attempts):
        try:
            current = store.get(customer_id)
            updated = apply_outcomes(current, outcomes, policy)
            if updated is current or updated is None:
                return False, conflicts
            store.compare_and_set(
                updated, expected_version=None if current is None else current.version
            )
        except ConflictError:
            conflicts += 1
            continue
        except BackendError:
            if attempt == max_attempts - 1:
                raise
            sleep(min(0.01 * 2**attempt, 1.0))
            continue
        return True, conflicts
    raise ConflictError(f"twin {customer_id!r} kept changing under {max_attempts} update attempts")


class TwinService(ConsumerService):
    """Consumes ``live_outcome`` and keeps each customer's twin up to date.

    With a store that does not outlive the process, the twins of newly owned partitions are
    first rebuilt from the whole of ``live_outcome``; ``on_rebuilt`` is called after each
    rebuild (``corepay serve twin`` moves the rebuilt twins out of the garbage collector's way).
    """

    group = "corepay-twin"
    topics = (LIVE_OUTCOME,)
    service = "twin"

    def __init__(
        self,
        bus: Bus,
        store: TwinStore,
        *,
        policy: TwinPolicy = TwinPolicy(),
        on_rebuilt: Callable[[], None] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(bus, **kwargs)  # type: ignore[arg-type]
        self.on_rebuilt = on_rebuilt
        if policy.dedup_window < self.max_records:
            # A redelivered batch could hold more of one customer's outcomes than the twin
            # remembers, and those would count twice.
            raise ConfigurationError(
                f"twin dedup_window ({policy.dedup_window}) must be at least the batch size "
                f"({self.max_records})"
            )
        self.store = store
        self.policy = policy
        # Commits are spaced, but never so far that a crash redelivers more outcomes than a
        # twin remembers having applied.
        self.redelivery_limit = policy.dedup_window
        self.conflicts = 0
        self.customers: set[str] = set()
        self._rebuilt: set[int] = set()
        #: ``"ok"`` once the twins it serves are current (read by the API's /readyz, from
        #: another thread: only ever replaced, never mutated).
        self.status = "starting"

    def handle(self, messages: Sequence[Message]) -> Handled:
        if not self.store.durable:
            assigned = {tp.partition for tp in self.consumer.assignment()}
            self._rebuild(assigned)
            self.status = "ok" if assigned else "waiting for partitions of live_outcome"
        else:
            self.status = "ok"
        return self._apply(messages)

    def _rebuild(self, partitions: set[int]) -> None:
        """Rebuild the twins of newly owned partitions from the whole of ``live_outcome``.

        Only for a store that does not outlive the process: after a restart its twins are
        gone, while the group resumes after the committed offset. Applying outcomes is
        idempotent and order-free, so replaying everything, then reading on, counts each once.
        """
        self._rebuilt &= partitions
        fresh = partitions - self._rebuilt
        if fresh:
            self.status = f"rebuilding twins of partitions {sorted(fresh)} from live_outcome"
            replayed = self.bus.replay(LIVE_OUTCOME, fresh)
            for start in range(0, len(replayed), self.max_records):
                self._apply(replayed[start : start + self.max_records], dead_letters=False)
            log.info(
                "rebuilt twins of partitions %s from %d outcomes", sorted(fresh), len(replayed)
            )
            self._rebuilt |= fresh
            if self.on_rebuilt is not None:
                self.on_rebuilt()

    def _apply(self, messages: Sequence[Message], *, dead_letters: bool = True) -> Handled:
        records: list[Record] = []
        by_customer: dict[str, list[Outcome]] = defaultdict(list)
        for message in messages:
            try:
                outcome = outcome_of(message)
                if outcome.path is not Path.LIVE:
                    raise DecodeError(f"a {outcome.path.value} outcome on {LIVE_OUTCOME}")
            except DecodeError as exc:
                if dead_letters:  # (a replayed bad message was dead-lettered when first read)
                    records.append(dead_letter(message, str(exc)))
                continue
            by_customer[outcome.customer_id].append(outcome)
        for customer_id, outcomes in by_customer.items():
            _, conflicts = update_twin(self.store, customer_id, outcomes, policy=self.policy)
            if conflicts:
                self.conflicts += conflicts
                TWIN_UPDATE_CONFLICTS.inc(conflicts)
            self.customers.add(customer_id)
        return Handled(records)
