"""Audit's control queue (:data:`shared.topology.AUDIT_CONTROL`): the token grants ingest
publishes, kept as a replica so the audit API authenticates the same tokens.

Which grant wins when grants arrive out of order is :func:`.decisions.grant_applies`; a
message that is not a grant, or a grant whose token hash another token id already has, is
parked with its reason.
"""

from __future__ import annotations

import structlog

from services.audit import decisions, metrics
from services.audit.consumer import park
from services.audit.decisions import Rejected
from services.audit.store import AuditStore
from shared import topology
from shared.broker import Delivery, Publisher
from shared.contracts import TokenGrant

log = structlog.get_logger("dihya.audit.control")


class ControlHandler:
    """``Consumer`` handler of :data:`shared.topology.AUDIT_CONTROL`."""

    def __init__(self, store: AuditStore, publisher: Publisher) -> None:
        self._store = store
        self._publisher = publisher

    async def __call__(self, message: Delivery) -> None:
        grant = decisions.decode(message.body, TokenGrant)
        if isinstance(grant, Rejected):
            await park(self._publisher, topology.AUDIT_CONTROL, message, grant.reason,
                       grant.error)
            return
        outcome = await self._store.apply_grant(grant)
        metrics.TOKEN_GRANTS.labels(outcome).inc()
        log.info("token_grant", token_id=grant.token_id, role=grant.role,
                 revoked=grant.revoked, outcome=outcome)
        if outcome == "conflict":
            await park(self._publisher, topology.AUDIT_CONTROL, message,
                       "token_hash_conflict", "another token id already has this token hash")
