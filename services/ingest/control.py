"""Ingest's control queue (:data:`shared.topology.INGEST_CONTROL`): requests from the other
services about data ingest keeps — today the erasure of a data subject (GDPR Art. 17), which
the audit service announces once it has erased the subject's records.

Erasing removes the subject's payloads from the message log (:mod:`.message_log`); erasing
twice removes nothing more, so a redelivered request is harmless. A message that is not a
:class:`~shared.contracts.SubjectErasure` is parked with its reason, never retried. The
subject id is never logged.
"""

from __future__ import annotations

import structlog
from pydantic import ValidationError

from services.ingest.message_log import MessageLog
from shared import topology
from shared.broker import Delivery, Publisher
from shared.contracts import SubjectErasure

log = structlog.get_logger("dihya.ingest.control")


class ControlHandler:
    """``Consumer`` handler of :data:`shared.topology.INGEST_CONTROL`."""

    def __init__(self, message_log: MessageLog, publisher: Publisher) -> None:
        self._log = message_log
        self._publisher = publisher

    async def __call__(self, message: Delivery) -> None:
        try:
            request = SubjectErasure.model_validate_json(message.body)
        except ValidationError as exc:
            why = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
                            for e in exc.errors(include_url=False, include_input=False))
            await self._publisher.park(topology.INGEST_CONTROL, message,
                                       reason="invalid_message", error=why[:500])
            log.warning("control_message_parked", reason="invalid_message", error=why[:300])
            return
        erased = await self._log.erase_subject(request.subject)
        log.info("subject_payloads_erased", events=erased, requested_by=request.requested_by)
