"""Fixtures that run the contract suites against every backend.

Each backend is one entry in :data:`BUS_BACKENDS_UNDER_TEST` or
:data:`STORE_BACKENDS_UNDER_TEST`. ``memory`` always runs. A server backend runs when its
scheme is registered in :mod:`corepay.backends` and its environment variable points at a server;
otherwise its tests are skipped with the reason and, where it helps, how to enable them.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence

import attrs
import pytest

from corepay import backends
from corepay.bus import Bus, Consumer
from corepay.store import TwinStore

#: Partitions of every bus under test (each bus URL asks for this many).
PARTITIONS = 4


@attrs.frozen
class Backend:
    """How the test run reaches one backend.

    Attributes:
        scheme: the URL scheme; the backend exists when the registry knows this scheme.
        url: the URL to open; ``{address}`` is replaced by the value of ``env``.
        env: the variable naming the server, ``None`` for in-process backends.
        enable: how to make ``env`` available, shown when it is unset.
        quiet_s: how long to wait before concluding that no further message is coming.
        deadline_s: how long to wait for what should arrive; only a failing test waits it out.
        required_in_ci: under ``CI=true`` a missing server fails the test instead of skipping
            it (CI starts a Kafka broker itself; no Couchbase server can run there).
    """

    scheme: str
    url: str
    env: str | None = None
    enable: str = ""
    quiet_s: float = 0.05
    deadline_s: float = 5.0
    required_in_ci: bool = False

    def resolve(self, registry: Mapping[str, str]) -> str:
        """The URL to open, or skip the test saying why this backend cannot run."""
        if self.scheme not in registry:
            pytest.skip(f"{self.scheme}:// backend not implemented in this version")
        address = ""
        if self.env is not None:
            address = os.environ.get(self.env, "").strip()
            if not address:
                if self.required_in_ci and os.environ.get("CI") == "true":
                    pytest.fail(f"CI=true, so {self.scheme}:// must be tested: {self.enable}")
                pytest.skip(f"{self.scheme}:// tests need a server: {self.enable}")
        return self.url.format(address=address)


BUS_BACKENDS_UNDER_TEST = [
    pytest.param(Backend("memory", f"memory://?partitions={PARTITIONS}"), id="memory"),
    pytest.param(
        Backend(
            "kafka",
            f"kafka://{{address}}?partitions={PARTITIONS}",
            env="COREPAY_TEST_KAFKA_BOOTSTRAP",
            enable=(
                "start a broker with scripts/kafka start and set COREPAY_TEST_KAFKA_BOOTSTRAP "
                "to the host:port it prints"
            ),
            quiet_s=1.0,
            deadline_s=30.0,
            required_in_ci=True,
        ),
        marks=pytest.mark.kafka,
        id="kafka",
    ),
]

STORE_BACKENDS_UNDER_TEST = [
    pytest.param(Backend("memory", "memory://"), id="memory"),
    pytest.param(
        Backend(
            "couchbase",
            "{address}",
            env="COREPAY_TEST_COUCHBASE_URL",
            enable=(
                "start a Couchbase cluster and set COREPAY_TEST_COUCHBASE_URL "
                "(couchbase://user:password@host/bucket)"
            ),
        ),
        marks=pytest.mark.couchbase,
        id="couchbase",
    ),
]


class BusFactory:
    """Opens buses of one backend; everything it opened is closed at teardown.

    Buses opened by one factory share their messages only if the backend is a server: use one
    bus per test when several consumers must see the same topic.
    """

    def __init__(self, backend: Backend, url: str, cleanup: contextlib.ExitStack) -> None:
        self.name = backend.scheme
        self.url = url
        self.partitions = PARTITIONS
        self.quiet_s = backend.quiet_s
        self.deadline_s = backend.deadline_s
        self._cleanup = cleanup

    def deadline(self) -> float:
        """The :func:`time.monotonic` time by which an expected message must have arrived."""
        return time.monotonic() + self.deadline_s

    def __call__(self) -> Bus:
        bus = backends.open_bus(self.url)
        self._cleanup.callback(bus.close)
        return bus

    def consumer(self, bus: Bus, group: str, topics: Sequence[str]) -> Consumer:
        """A group member that is closed at teardown (closing twice is harmless)."""
        member = bus.consumer(group, topics)
        self._cleanup.callback(member.close)
        return member


class StoreFactory:
    """Opens twin stores of one backend; everything it opened is closed at teardown."""

    def __init__(self, backend: Backend, url: str, cleanup: contextlib.ExitStack) -> None:
        self.name = backend.scheme
        self.url = url
        self._cleanup = cleanup

    def __call__(self) -> TwinStore:
        store = backends.open_store(self.url)
        self._cleanup.callback(store.close)
        return store


@pytest.fixture(params=BUS_BACKENDS_UNDER_TEST)
def bus_factory(request: pytest.FixtureRequest) -> Iterator[BusFactory]:
    backend: Backend = request.param
    url = backend.resolve(backends.BUS_BACKENDS)
    # LIFO: consumers close before the bus they came from.
    with contextlib.ExitStack() as cleanup:
        yield BusFactory(backend, url, cleanup)


@pytest.fixture(params=STORE_BACKENDS_UNDER_TEST)
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    backend: Backend = request.param
    url = backend.resolve(backends.STORE_BACKENDS)
    with contextlib.ExitStack() as cleanup:
        yield StoreFactory(backend, url, cleanup)


@pytest.fixture
def fresh_name() -> Callable[[str], str]:
    """Names no other test (or earlier run against the same server) has used."""

    def name(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"

    return name
