"""The Couchbase twin store, on the real SDK, in everything that runs without a cluster.

The store's behaviour against a cluster is in the TwinStore contract suite
(tests/contract), which runs it whenever COREPAY_TEST_COUCHBASE_URL names one.
"""

from __future__ import annotations

import socket
import threading

import pytest
from couchbase import exceptions as cbx

from corepay.backends import open_store, parse_options
from corepay.backends.couchbase import CouchbaseConfig, CouchbaseTwinStore, translate
from corepay.errors import (
    BackendError,
    BackendTimeoutError,
    ConfigurationError,
    ConflictError,
    UnavailableError,
)
from corepay.settings import Settings

SECRET = "s3cr3t-Pa55"


def _config(url: str, **kwargs: str) -> CouchbaseConfig:
    return CouchbaseConfig.from_url(url, parse_options(url), **kwargs)


def test_a_url_names_hosts_bucket_scope_collection_and_options() -> None:
    config = _config(
        "couchbases://cb1.example,cb2.example:11207/payments?scope=risk&collection=twins"
        "&durability=majority&kv_timeout=1.5&connect_timeout=4",
        username="corepay",
        password=SECRET,
    )
    assert config.connection_string == "couchbases://cb1.example,cb2.example:11207"
    assert (config.bucket, config.scope, config.collection) == ("payments", "risk", "twins")
    assert (config.durability, config.kv_timeout, config.connect_timeout) == ("majority", 1.5, 4.0)
    assert (config.username, config.password) == ("corepay", SECRET)


def test_defaults_and_credentials_from_the_url_which_settings_override() -> None:
    config = _config(f"couchbase://corepay:{SECRET}@127.0.0.1/twins")
    assert (config.scope, config.collection, config.durability) == ("_default", "_default", "none")
    assert (config.username, config.password) == ("corepay", SECRET)
    assert _config(f"couchbase://a:{SECRET}@h/b", username="ops", password="x").username == "ops"


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("couchbase://h", "bucket"),
        ("couchbase://h/a/b", "bucket"),
        ("couchbase:///twins", "host"),
        ("couchbase://h/b?durability=always", "durability"),
        ("couchbase://h/b?kv_timeout=soon", "kv_timeout"),
        ("couchbase://h/b?connect_timeout=0", "connect_timeout"),
        ("couchbase://h/b?bucket_password=x", "bucket_password"),
    ],
)
def test_a_bad_url_is_a_configuration_error_naming_the_problem(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        _config(url)


def test_credentials_never_show_in_reprs_or_errors() -> None:
    config = _config(f"couchbase://corepay:{SECRET}@h/b")
    assert SECRET not in repr(config)
    assert SECRET not in repr(Settings(store_password=SECRET))
    with pytest.raises(ConfigurationError) as caught:
        open_store(f"couchbase://corepay:{SECRET}@h/b?durability=sometimes")
    assert SECRET not in str(caught.value)


def test_a_store_without_credentials_says_which_settings_to_give() -> None:
    with pytest.raises(ConfigurationError, match="COREPAY_STORE_USERNAME"):
        open_store("couchbase://127.0.0.1/twins")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (cbx.CasMismatchException(), ConflictError),
        (cbx.DocumentExistsException(), ConflictError),
        (cbx.TimeoutException(), BackendTimeoutError),
        (cbx.AmbiguousTimeoutException(), BackendTimeoutError),
        (cbx.UnAmbiguousTimeoutException(), BackendTimeoutError),
        (cbx.AuthenticationException(), UnavailableError),
        (cbx.BucketNotFoundException(), ConfigurationError),
        (cbx.ServiceUnavailableException(), UnavailableError),
    ],
)
def test_sdk_exceptions_become_corepay_errors_a_user_can_act_on(
    exc: Exception, expected: type[Exception]
) -> None:
    config = _config(f"couchbase://corepay:{SECRET}@cb.example/twins")
    error = translate(exc, "storing the twin of cust-1", config)
    assert type(error) is expected
    assert "storing the twin of cust-1" in str(error) and "cb.example" in str(error)
    assert SECRET not in str(error)


def test_an_unreachable_cluster_is_a_clear_error_not_a_hang() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"couchbase://corepay:{SECRET}@127.0.0.1:{port}/twins?connect_timeout=2"
    outcome: list[BaseException | CouchbaseTwinStore] = []

    def connect() -> None:
        try:
            outcome.append(open_store(url))  # type: ignore[arg-type]
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "connecting to an unreachable cluster hung"
    [error] = outcome
    assert isinstance(error, BackendError)
    assert f"127.0.0.1:{port}" in str(error) and "connect_timeout 2 s" in str(error)
    assert SECRET not in str(error)
