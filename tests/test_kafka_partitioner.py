"""The Kafka bus's partitioner puts every key where Kafka's default partitioner would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.cluster import ClusterMetadata
from kafka.partitioner.default import DefaultPartitioner

from corepay.backends.kafka import KeyHashPartitioner


class _Cluster(ClusterMetadata):  # type: ignore[misc]
    """Metadata for a few topics of different partition counts, without a broker."""

    def __init__(self, partitions: dict[str, int]) -> None:
        super().__init__()
        self._counts = partitions

    def topics(self, exclude_internal_topics: bool = True) -> set[str]:
        return set(self._counts)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self._counts.get(topic)
        return None if count is None else set(range(count))

    def available_partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions_for_topic(topic)


CLUSTER = _Cluster({"one": 1, "four": 4, "seven": 7, "twelve": 12})


@given(
    st.lists(st.binary(max_size=40), min_size=1, max_size=30),
    st.sampled_from(sorted(CLUSTER.topics())),
    st.integers(1, 5),
)
def test_keys_land_where_the_default_partitioner_puts_them(
    keys: list[bytes], topic: str, remember: int
) -> None:
    ours, default = KeyHashPartitioner(remember=remember), DefaultPartitioner()

    # Twice over, so remembered hashes (and forgotten ones) are used too.
    for key in [*keys, *keys]:
        assert ours.partition(topic, key, key, b"", b"", CLUSTER) == default.partition(
            topic, key, key, b"", b"", CLUSTER
        )


def test_a_keyless_message_goes_to_one_of_the_topics_partitions() -> None:
    picked = {
        KeyHashPartitioner().partition("seven", None, None, b"", b"", CLUSTER) for _ in range(50)
    }

    assert picked <= set(range(7))


def test_an_unknown_topic_is_refused() -> None:
    with pytest.raises(ValueError, match="nowhere"):
        KeyHashPartitioner().partition("nowhere", None, b"k", None, b"", CLUSTER)
