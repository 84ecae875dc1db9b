"""SQLAlchemy tables, one module per table."""

from vivix.models.account import Account
from vivix.models.admin_audit_entry import AdminAuditEntry
from vivix.models.api_key import ApiKey
from vivix.models.base import Base
from vivix.models.generation import (
    ACTIVE_STATUSES,
    NEW_GENERATION_COLUMNS,
    Generation,
    GenerationStatus,
    NewGeneration,
)
from vivix.models.generation_event import GenerationEvent
from vivix.models.ledger_entry import LedgerEntry, LedgerKind
from vivix.models.provider_circuit import ProviderCircuit
from vivix.models.studio_session import StudioSession
from vivix.models.user import User
from vivix.models.webhook import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "ACTIVE_STATUSES",
    "NEW_GENERATION_COLUMNS",
    "Account",
    "AdminAuditEntry",
    "ApiKey",
    "Base",
    "DeliveryStatus",
    "Generation",
    "GenerationEvent",
    "GenerationStatus",
    "LedgerEntry",
    "LedgerKind",
    "NewGeneration",
    "ProviderCircuit",
    "StudioSession",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
