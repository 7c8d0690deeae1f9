"""What the service must remember across requests, restarts, workers and replicas.

``roles`` defines the interfaces (audit chain, inventory, claims, tokens, CRL numbers,
checkpoints, CA generations) and the unit of work that commits them together;
``records`` the values; ``changes`` the state changes an audit record commits with;
``sqlite`` and ``memory`` implement them, and ``factory`` picks one from the config.
"""

from kubeca_server.store.records import (
    CertificateRow,
    GenerationRow,
    GenerationState,
    InventoryCursor,
    InventoryQuery,
    KeyKind,
    Provenance,
    TokenCursor,
    TokenRecord,
)
from kubeca_server.store.roles import Store, UnitOfWork

__all__ = [
    "CertificateRow",
    "GenerationRow",
    "GenerationState",
    "InventoryCursor",
    "InventoryQuery",
    "KeyKind",
    "Provenance",
    "Store",
    "TokenCursor",
    "TokenRecord",
    "UnitOfWork",
]
