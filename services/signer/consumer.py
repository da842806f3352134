"""The signer's message handlers and the secret cache they read.

:class:`Signer` handles the three queues (control messages, jobs, sign-now requests); each
handler returns only once what it published is confirmed, so the consumer acks after the
fact. :class:`SecretCache` keeps decrypted secrets per endpoint. Wiring is in ``app.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import weakref

import structlog

from services.signer import decisions
from services.signer.decisions import StoredSecret, UnsignableJobError
from services.signer.metrics import (
    CONTROL,
    JOBS,
    SECRET_WAIT,
    SIGNED,
)
from services.signer.settings import Settings
from services.signer.store import Keystore
from shared import custom_headers, telemetry, topology
from shared.broker import Delivery, Publisher, confirm_all
from shared.contracts import DeliveryJob, SignedDelivery, SignRefusal, encode, utcnow

log = structlog.get_logger("dihya.signer")

MAX_CACHED = 10_000
"""Cached endpoints before expired entries are swept out."""

RECHECK_INTERVAL = 0.5
"""While a job waits for its secret, how often the keystore is re-read anyway: the control
message may be consumed by *another* replica, whose signal never reaches this process."""


def new_nonce() -> str:
    """128 random bits as 32 hex digits: a receiver never sees the same nonce twice."""
    return secrets.token_hex(16)


class SecretCache:
    """Decrypted secrets per endpoint, with a short TTL, single-flight loads and arrival signals.

    * A hit within ``ttl`` costs no query. Control messages handled here invalidate at once;
      ones handled by another replica sharing the keystore are picked up when the TTL lapses.
    * A miss always reads the keystore (no negative caching: a secret may have been stored by
      another replica a moment ago). Concurrent misses for one endpoint share one query.
    * A job whose endpoint has no secret yet :meth:`wait`\\s for it: it is woken the instant a
      control message for that endpoint is applied here, and re-reads the keystore every
      :data:`RECHECK_INTERVAL` for the case where another replica applied it.
    """

    def __init__(self, keystore: Keystore, ttl: float) -> None:
        self._keystore = keystore
        self._ttl = ttl
        self._entries: dict[str, tuple[float, list[StoredSecret]]] = {}
        self._epoch = 0  # bumped by every invalidation
        self._loading: dict[str, asyncio.Task[list[StoredSecret]]] = {}
        # Held only by waiting jobs: an endpoint nobody waits for leaves no entry behind.
        self._arrived: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary())

    async def get(self, endpoint_id: str) -> tuple[str, ...]:
        """The secrets that may sign for ``endpoint_id`` now (current first); may be empty."""
        entry = self._entries.get(endpoint_id)
        if entry is not None and entry[0] > time.monotonic():
            found = decisions.valid_secrets(entry[1], utcnow())
            if found:
                return found
        task = self._loading.get(endpoint_id)
        if task is None:
            task = asyncio.create_task(self._fetch(endpoint_id))
            self._loading[endpoint_id] = task
        return decisions.valid_secrets(await asyncio.shield(task), utcnow())

    async def _fetch(self, endpoint_id: str) -> list[StoredSecret]:
        epoch = self._epoch
        try:
            rows = await self._keystore.load(endpoint_id, utcnow())
        finally:
            if self._loading.get(endpoint_id) is asyncio.current_task():
                del self._loading[endpoint_id]
        # Cache only if no control message was applied meanwhile (the rows could predate it).
        if rows and self._ttl > 0 and self._epoch == epoch:
            now = time.monotonic()
            if len(self._entries) >= MAX_CACHED:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            self._entries[endpoint_id] = (now + self._ttl, rows)
        return rows

    def invalidate(self, endpoint_id: str) -> None:
        """Forget ``endpoint_id``'s secrets and wake the jobs waiting for them."""
        self._entries.pop(endpoint_id, None)
        self._loading.pop(endpoint_id, None)
        self._epoch += 1
        event = self._arrived.pop(endpoint_id, None)
        if event is not None:
            event.set()

    async def wait(self, endpoint_id: str, timeout: float) -> tuple[str, ...]:
        """Secrets of ``endpoint_id`` as soon as there are some, or ``()`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Take the event *before* reading, so a signal between read and wait is not lost.
            event = self._arrived.setdefault(endpoint_id, asyncio.Event())
            found = await self.get(endpoint_id)
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, RECHECK_INTERVAL))


class Signer:
    """The two message handlers. Each returns only once what it published is confirmed."""

    def __init__(self, settings: Settings, keystore: Keystore, cache: SecretCache,
                 publisher: Publisher) -> None:
        self._settings = settings
        self._keystore = keystore
        self._cache = cache
        self._publisher = publisher
        self._headers_cipher = settings.headers_cipher()
        # custom headers per endpoint: (expires at, headers); invalidated like the secrets
        self._headers: dict[str, tuple[float, dict[str, str]]] = {}
        # the load in flight per endpoint, shared by the jobs that found the entry stale
        self._headers_loading: dict[str, asyncio.Future[dict[str, str]]] = {}
        self._headers_epoch = 0  # bumped by every control message

    async def on_control(self, message: Delivery) -> None:
        try:
            msg = decisions.parse_control(message.body)
        except ValueError as exc:
            await self._park(topology.SIGNER_CONTROL, message, "invalid_message", str(exc))
            return
        applied = await self._keystore.apply(msg, utcnow())
        self._cache.invalidate(msg.endpoint_id)
        self._forget_headers(msg.endpoint_id)
        CONTROL.labels(msg.action, "applied" if applied else "ignored_stale").inc()
        log.info("secret_control", endpoint_id=msg.endpoint_id, action=msg.action,
                 applied=applied, overlap=msg.previous_valid_until is not None)
        fact = decisions.secret_fact(msg, applied=applied, now=utcnow())
        await self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact)

    async def on_job(self, message: Delivery) -> None:
        """One job, or a batch of them: each signed and forwarded (or parked) on its own; the
        message is acked once every one is confirmed — if one fails, the whole message is
        requeued, and the jobs already forwarded go again with the same delivery ids."""
        try:
            jobs = decisions.parse_jobs(message.body)
        except ValueError as exc:
            await self._park(topology.SIGNER_JOBS, message, "invalid_message", str(exc))
            return
        if len(jobs) == 1:
            await self._sign(message, jobs[0], alone=False)
            return
        raw = message.headers.get(topology.TRACES_HEADER)
        parents = [_text(p) for p in raw] if isinstance(raw, list) else []
        parents += [""] * (len(jobs) - len(parents))
        await confirm_all(self._sign_in_trace(message, job, parent)
                          for job, parent in zip(jobs, parents, strict=False))

    async def _sign_in_trace(self, message: Delivery, job: DeliveryJob, parent: str) -> None:
        """A job of a batch, in a span of the trace of the event it came from (the batch's
        message itself belongs to no one trace)."""
        with telemetry.consuming(topology.SIGNER_JOBS, {"traceparent": parent} if parent
                                 else None):
            await self._sign(message, job, alone=True)

    async def _sign(self, message: Delivery, job: DeliveryJob, *, alone: bool) -> None:
        """Sign and forward one job of ``message``; ``alone``: a job of a batch, parked as a
        message of its own if it cannot be signed (its batch-mates go on)."""
        signed = await self._signed(job)
        if isinstance(signed, SignRefusal):
            await self._park(topology.SIGNER_JOBS, message, signed.reason, signed.error,
                             job=job, alone=alone)
            return
        await self._publisher.send(topology.WORK_EXCHANGE, topology.DELIVER, signed)
        SIGNED.inc()
        log.debug("signed", delivery_id=job.delivery_id, event_id=job.event.id,
                  endpoint_id=job.endpoint_id, attempt=job.attempt)

    async def on_sign_now(self, message: Delivery) -> None:
        """A sign-now request: an ordered endpoint's delivery that is its key's next, signed
        exactly as :meth:`on_job` signs and answered to its asker (direct reply-to) instead
        of forwarded — a :class:`SignRefusal` if it cannot be signed. An answer whose asker
        is gone is dropped (it asks again, or its replica's lane went to another)."""
        try:
            [job] = decisions.parse_jobs(message.body)
            if not message.reply_to:
                raise ValueError("a sign-now request needs reply_to")
        except ValueError as exc:  # a batch too: requests are single jobs
            # dropped (acked): a request is no work of its own, its asker times out
            JOBS.labels("refused", "invalid_message").inc()
            log.warning("sign_now_invalid", error=str(exc)[:300])
            return
        answer = await self._signed(job)
        await self._publisher.send("", message.reply_to, answer,
                                   correlation_id=message.correlation_id, mandatory=False)
        if isinstance(answer, SignRefusal):
            JOBS.labels("refused", answer.reason).inc()
        else:
            SIGNED.inc()

    async def _signed(self, job: DeliveryJob) -> SignedDelivery | SignRefusal:
        """``job`` signed now, or why it cannot be."""
        found = await self._cache.get(job.endpoint_id)
        if not found:
            started = time.monotonic()
            found = await self._cache.wait(job.endpoint_id, self._settings.secret_wait)
            SECRET_WAIT.observe(time.monotonic() - started)
        if not found:
            return SignRefusal(reason="no_secret", error=f"no secret for endpoint "
                               f"{job.endpoint_id} after {self._settings.secret_wait:g}s")
        try:
            sealed = await self._sealed_headers(job)
            return decisions.sign(job, found, nonce=new_nonce(), now=utcnow(),
                                  sealed_headers=sealed)
        except UnsignableJobError as exc:
            return SignRefusal(reason="unsignable", error=str(exc))

    async def _sealed_headers(self, job: DeliveryJob) -> str | None:
        """The endpoint's custom headers sealed for this delivery, ``None`` if it has none."""
        entry = self._headers.get(job.endpoint_id)
        if entry is not None and entry[0] > time.monotonic():
            found = entry[1]
        else:
            found = await self._load_headers(job.endpoint_id)
        if not found:
            return None
        if self._headers_cipher is None:
            raise UnsignableJobError("the endpoint has custom headers but DIHYA_HEADERS_KEY "
                                     "is not set on the signer")
        return custom_headers.seal(found, job.delivery_id, self._headers_cipher)

    def _forget_headers(self, endpoint_id: str) -> None:
        """Drop the endpoint's cached custom headers (a control message changed them), and
        keep a load already in flight from caching what it read before."""
        self._headers.pop(endpoint_id, None)
        self._headers_loading.pop(endpoint_id, None)
        self._headers_epoch += 1

    async def _load_headers(self, endpoint_id: str) -> dict[str, str]:
        """The endpoint's custom headers from the keystore, then cached. The jobs that find
        the entry missing or expired at the same moment share one query: each asked on its
        own before, a batch's worth at every expiry (7 to 13 % of the signer's profile samples
        at saturation on PostgreSQL)."""
        loading = self._headers_loading.get(endpoint_id)
        if loading is None:
            loading = asyncio.ensure_future(self._fetch_headers(endpoint_id))
            self._headers_loading[endpoint_id] = loading
        # shielded: a cancelled job (its consumer stopping) does not cancel the others'
        return await asyncio.shield(loading)

    async def _fetch_headers(self, endpoint_id: str) -> dict[str, str]:
        epoch = self._headers_epoch
        try:
            found = await self._keystore.load_headers(endpoint_id)
        finally:
            if self._headers_loading.get(endpoint_id) is asyncio.current_task():
                del self._headers_loading[endpoint_id]
        # cached only if no control message came meanwhile (the row could predate it)
        if self._settings.cache_ttl > 0 and epoch == self._headers_epoch:
            if len(self._headers) >= MAX_CACHED:
                self._headers.clear()
            self._headers[endpoint_id] = (time.monotonic() + self._settings.cache_ttl, found)
        return found

    async def _park(self, queue: str, message: Delivery, reason: str,
                    error: str, job: DeliveryJob | None = None, *, alone: bool = False) -> None:
        """Set a message aside with why, and audit it; the consumer then acks it. ``alone``:
        only ``job``, one of the message's batch, as a message of its own (what a retry of
        the dead letter sends back to the signer)."""
        if alone and job is not None:
            body = encode(job)
            headers = {k: v for k, v in message.headers.items()  # the batch's, not the job's
                       if k not in (topology.BATCH_HEADER, topology.TRACES_HEADER)}
            parked = self._publisher.park_body(queue, body, reason=reason, error=error,
                                               headers=headers, type=job.type)
        else:
            body = message.body
            parked = self._publisher.park(queue, message, reason=reason, error=error)
        fact = decisions.parked_fact(queue=queue, reason=reason, error=error, body=body,
                                    now=utcnow(), job=job)
        await asyncio.gather(
            parked,
            self._publisher.send(topology.AUDIT_EXCHANGE, fact.kind, fact),
        )
        if queue == topology.SIGNER_JOBS:
            JOBS.labels("parked", reason).inc()
        else:
            CONTROL.labels("unknown", reason).inc()
        log.warning("parked", queue=queue, reason=reason, error=error,
                    delivery_id=None if job is None else job.delivery_id,
                    endpoint_id=None if job is None else job.endpoint_id,
                    attempt=None if job is None else job.attempt)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
