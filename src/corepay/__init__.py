"""CorePay: every payment decided twice, live and by the customer's digital twin.

Import the pieces to build on any bus and twin store::

    from corepay import MemoryBus, MemoryTwinStore, Pipeline

    with Pipeline(MemoryBus(), MemoryTwinStore()) as pipeline:
        pipeline.submit({...})   # a payment request in the wire format
        pipeline.drain()
"""

from corepay.backends import open_bus, open_store
from corepay.backends.memory import MemoryBus, MemoryTwinStore
from corepay.bus import (
    DIVERGENCE_ALERT,
    LIVE_OUTCOME,
    RAW_TRANSACTIONS,
    SIMULATION_OUTCOME,
    Bus,
    Consumer,
    Delivery,
    Message,
    Record,
    TopicPartition,
)
from corepay.divergence import DivergenceDetector, Pairing
from corepay.engine import Engine
from corepay.errors import (
    BackendError,
    BackendTimeoutError,
    CommitFailedError,
    ConfigurationError,
    ConflictError,
    CorepayError,
    DecodeError,
    FieldError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)
from corepay.features import FEATURES, TRANSACTION_FEATURES, TWIN_FEATURES, feature_matrix
from corepay.gateway import GatewayResponse, PaymentGateway, SimulatedGateway, open_gateway
from corepay.http_gateway import CircuitBreaker, HttpGateway
from corepay.ingest import Accepted, Ingestor
from corepay.models import (
    AlertKind,
    Decision,
    DivergenceAlert,
    HistoryEntry,
    Outcome,
    Path,
    Timings,
    Transaction,
    Twin,
)
from corepay.paths import LivePath, SimulationPath
from corepay.pipeline import Pipeline
from corepay.riskmodel import LogisticRegression, ModelMetadata, RiskModel, load_model, save_model
from corepay.scoring import DecisionPolicy, Thresholds
from corepay.settings import Settings
from corepay.store import TwinStore
from corepay.traffic import Label, TrafficGenerator
from corepay.training import TrainingConfig, default_model, train
from corepay.twin import TwinPolicy, apply_outcome, apply_outcomes
from corepay.twin_client import HttpTwinClient, StoreTwinClient, TwinClient
from corepay.wire import (
    TwinDecoder,
    decode_alert,
    decode_outcome,
    decode_transaction,
    decode_twin,
    encode_alert,
    encode_outcome,
    encode_outcomes,
    encode_transaction,
    encode_twin,
    parse_transaction,
)

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCE_ALERT",
    "FEATURES",
    "LIVE_OUTCOME",
    "RAW_TRANSACTIONS",
    "SIMULATION_OUTCOME",
    "TRANSACTION_FEATURES",
    "TWIN_FEATURES",
    "Accepted",
    "AlertKind",
    "BackendError",
    "BackendTimeoutError",
    "Bus",
    "CircuitBreaker",
    "CommitFailedError",
    "ConfigurationError",
    "ConflictError",
    "Consumer",
    "CorepayError",
    "Decision",
    "DecisionPolicy",
    "DecodeError",
    "Delivery",
    "DivergenceAlert",
    "DivergenceDetector",
    "Engine",
    "FieldError",
    "GatewayResponse",
    "HistoryEntry",
    "HttpGateway",
    "HttpTwinClient",
    "Ingestor",
    "Label",
    "LivePath",
    "LogisticRegression",
    "MemoryBus",
    "MemoryTwinStore",
    "Message",
    "ModelMetadata",
    "NotFoundError",
    "Outcome",
    "Pairing",
    "Path",
    "PaymentGateway",
    "Pipeline",
    "Record",
    "RiskModel",
    "Settings",
    "SimulatedGateway",
    "SimulationPath",
    "StoreTwinClient",
    "Thresholds",
    "Timings",
    "TopicPartition",
    "TrafficGenerator",
    "TrainingConfig",
    "Transaction",
    "Twin",
    "TwinClient",
    "TwinDecoder",
    "TwinPolicy",
    "TwinStore",
    "UnavailableError",
    "ValidationError",
    "apply_outcome",
    "apply_outcomes",
    "decode_alert",
    "decode_outcome",
    "decode_transaction",
    "decode_twin",
    "default_model",
    "encode_alert",
    "encode_outcome",
    "encode_outcomes",
    "encode_transaction",
    "encode_twin",
    "feature_matrix",
    "load_model",
    "open_bus",
    "open_gateway",
    "open_store",
    "parse_transaction",
    "save_model",
    "train",
]
