"""CorePay as a library: build the pipeline on a bus and a twin store, feed it, read the results.

Run it with ``python examples/library.py`` after ``pip install .``.
"""

from __future__ import annotations

from corepay import (
    DIVERGENCE_ALERT,
    MemoryBus,
    MemoryTwinStore,
    Pairing,
    Pipeline,
    ValidationError,
    decode_alert,
)


def payment(n: int, amount: str, *, country: str = "DE", merchant: str = "m-bakery") -> dict:
    return {
        "transaction_id": f"tx-example-{n}",
        "customer_id": "cust-ada",
        "amount": amount,
        "currency": "EUR",
        "merchant_id": merchant,
        "merchant_category": "5411",
        "country": country,
        "channel": "pos",
        "timestamp": f"2026-11-{n + 1:02d}T10:00:00+01:00",
    }


def main() -> None:
    bus, store = MemoryBus(), MemoryTwinStore()  # any Bus and TwinStore plug in here
    verdicts: list[Pairing] = []
    with Pipeline(bus, store, seed=1, on_pairing=verdicts.append) as pipeline:
        # A month of ordinary bakery payments builds Ada's twin...
        for day in range(20):
            pipeline.submit(payment(day, f"{8 + day % 5}.40"))
            pipeline.drain()
        # ...then a payment her history does not explain.
        pipeline.submit(payment(21, "2450.00", country="BR", merchant="m-electronics"))
        pipeline.drain()

        try:
            pipeline.submit({**payment(22, "5.00"), "currency": "euro"})
        except ValidationError as exc:
            print(f"rejected at ingestion: {exc}")

    for pairing in verdicts[-2:]:
        live, sim = pairing.live, pairing.simulation
        assert live is not None and sim is not None
        print(
            f"{pairing.transaction_id}: live {live.decision} {list(live.reasons)} | "
            f"simulation {sim.decision} {list(sim.reasons)} (twin v{sim.twin_version})"
        )

    # Alerts are ordinary messages: read them as any consumer group would.
    with bus.consumer("example-reader", [DIVERGENCE_ALERT]) as consumer:
        for message in consumer.poll(timeout=0):
            alert = decode_alert(message.value)
            print(f"ALERT {alert.kind}: {alert.transaction_id}: {alert.detail}")
        consumer.commit()

    twin = store.get("cust-ada")
    assert twin is not None
    print(
        f"twin of {twin.customer_id}: {twin.count} payments, mean {twin.amount_mean:.2f} EUR, "
        f"countries {dict(twin.countries)}, version {twin.version}"
    )


if __name__ == "__main__":
    main()
