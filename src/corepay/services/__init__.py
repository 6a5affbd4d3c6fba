"""The four services, each a thin layer over the core: ingestion, engine, twin, detector.

Each consumer service is a :class:`~corepay.services.runner.ConsumerService`: poll a batch,
handle it with the core, publish what it produced, then commit (at-least-once). The same
objects run in one process (:mod:`corepay.pipeline`) or one per process (``corepay serve``).
"""
