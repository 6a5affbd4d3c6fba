"""Choosing a backend by URL: the registry, its options and its error messages."""

from __future__ import annotations

import subprocess
import sys

import pytest

from corepay.backends import BUS_BACKENDS, STORE_BACKENDS, open_bus, open_store
from corepay.backends.memory import MemoryBus, MemoryTwinStore
from corepay.bus import Bus
from corepay.errors import ConfigurationError
from corepay.store import TwinStore


@pytest.mark.parametrize(
    ("url", "partitions"),
    [("memory://", 4), ("memory://?partitions=8", 8), ("MEMORY://?partitions=1", 1)],
)
def test_open_bus_chooses_the_backend_by_url(url: str, partitions: int):
    with open_bus(url) as bus:
        assert isinstance(bus, MemoryBus)
        assert bus.partitions == partitions
        assert bus.publish("payments", "customer-1", b"x").partition < partitions


def test_open_store_chooses_the_backend_by_url():
    with open_store("memory://") as store:
        assert isinstance(store, MemoryTwinStore)
        assert store.get("customer-1") is None


def test_each_url_opens_its_own_memory_backend():
    first, second = open_bus("memory://"), open_bus("memory://")
    first.publish("payments", "customer-1", b"x")
    assert second.messages("payments") == []  # type: ignore[attr-defined]


def test_memory_urls_import_no_driver():
    code = (
        "import sys\n"
        "from corepay.backends import open_bus, open_store\n"
        "open_bus('memory://'); open_store('memory://')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kafka', 'couchbase')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("opener", "registry"), [(open_bus, BUS_BACKENDS), (open_store, STORE_BACKENDS)]
)
@pytest.mark.parametrize("url", ["rabbitmq://host:5672", "localhost:9092", "", "memory"])
def test_an_unknown_scheme_is_refused_with_the_known_ones(opener, registry, url: str):
    with pytest.raises(ConfigurationError) as caught:
        opener(url)
    message = str(caught.value)
    for scheme in registry:
        assert f"{scheme}://" in message


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("memory://?partition=8", "partition"),
        ("memory://?partitions=eight", "partitions"),
        ("memory://?partitions=2.5", "partitions"),
        ("memory://?partitions=", "partitions"),
        ("memory://?partitions=4&partitions=8", "partitions"),
        ("memory://?partitions=4&colour=blue", "colour"),
    ],
)
def test_bad_bus_options_are_refused_naming_the_option(url: str, option: str):
    with pytest.raises(ConfigurationError, match=option):
        open_bus(url)


@pytest.mark.parametrize("partitions", ["0", "-3"])
def test_a_partition_count_below_one_is_refused_with_the_rule(partitions: str):
    with pytest.raises(ConfigurationError, match=r"partitions.*at least 1"):
        open_bus(f"memory://?partitions={partitions}")


@pytest.mark.parametrize(
    ("url", "option"),
    [("memory://?partitions=4", "partitions"), ("memory://?ttl=1&ttl=2", "ttl")],
)
def test_bad_store_options_are_refused_naming_the_option(url: str, option: str):
    with pytest.raises(ConfigurationError, match=option):
        open_store(url)


def test_a_configuration_error_is_a_value_error():
    with pytest.raises(ValueError):
        open_bus("nope://")


@pytest.mark.parametrize("opener", [open_bus, open_store])
@pytest.mark.parametrize(
    "url",
    [
        "couch://admin:hunter2@db.example/twins",
        "kafka+sasl://svc:s3cr%40t@broker:9093,broker2:9093",
        "//admin:hunter2@db.example/twins",
        "admin:hunter2@db.example/twins",
        "memory://admin:hunter2@localhost?partitions=x",
    ],
)
def test_a_password_in_a_url_never_appears_in_the_error(opener, url: str):
    password = url.split("@")[0].rsplit(":", 1)[1]
    with pytest.raises(ConfigurationError) as caught:
        opener(url)
    assert password not in str(caught.value)
    assert password not in repr(caught.value)


def test_a_registered_backend_whose_driver_is_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setitem(BUS_BACKENDS, "carrier", "corepay.backends.no_such_module:CarrierBus")
    with pytest.raises(ConfigurationError, match=r"corepay\[carrier\]"):
        open_bus("carrier://host")


def test_opened_backends_are_the_interfaces():
    assert isinstance(open_bus("memory://"), Bus)
    assert isinstance(open_store("memory://"), TwinStore)


def test_the_install_gives_kafka_python_its_c_checksums() -> None:
    # Without the crc32c package every KB produced or consumed costs ~120 us of CPU in pure
    # Python: the dependency must come with CorePay, not be left to each deployment.
    from corepay.backends.kafka import _checksums_in_c

    assert _checksums_in_c()
