"""HTTP API of the audit service.

Reading (roles ``auditor`` and ``admin``): query, export and verify the log, and export what it
holds about one data subject (GDPR Art. 15 / 20). Tenant tokens (``tenant_admin``,
``tenant_viewer``) query and export their own tenant's records only. Destroying (role
``admin`` only, because it cannot be undone): erase a data subject (Art. 17) and run a
retention purge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta

import aiohttp_cors
import orjson
import structlog
from aiohttp import web

from services.audit import decisions, exports, models, openapi
from services.audit.decisions import RecordQuery, sealing
from services.audit.exports import Format
from services.audit.heads import Heads
from services.audit.store import AuditStore
from shared.contracts import AuditFact, Role, SubjectErasure, utcnow
from shared.ids import new_id
from shared.openapi import Media, Route
from shared.web import (
    REFUSAL_HOOK,
    TOKEN_LOOKUP,
    Principal,
    ReadinessCheck,
    RefusalHook,
    TokenLookup,
    add_ops_routes,
    authorize,
    error,
    errors_middleware,
    json_response,
)

log = structlog.get_logger("dihya.audit.http")

STORE: web.AppKey[AuditStore] = web.AppKey("audit_store")
PAGE_LIMIT: web.AppKey[int] = web.AppKey("audit_page_limit")
EXPORT_PAGE: web.AppKey[int] = web.AppKey("audit_export_page")
RETENTION_DAYS: web.AppKey[int] = web.AppKey("audit_retention_days")
OPENAPI: web.AppKey[bytes] = web.AppKey("audit_openapi")
HEADS: web.AppKey[Heads | None] = web.AppKey("audit_heads")
ErasureNotice = Callable[[SubjectErasure], Awaitable[None]]
ANNOUNCE_ERASURE: web.AppKey[ErasureNotice | None] = web.AppKey("audit_announce_erasure")

READERS: tuple[Role, ...] = ("auditor", "admin")
RECORD_READERS: tuple[Role, ...] = (*READERS, *decisions.TENANT_ROLES)
"""Who may query and export records: tenant tokens too, confined to their own tenant
(:func:`.decisions.confine`); the chain, subjects and heads stay platform-only."""
ERASERS: tuple[Role, ...] = ("admin",)
"""Erasure and purge destroy data for good: admin only (an auditor reads and exports)."""

SUBJECT_ROUTE = "/v1/audit/subjects/{subject}"
HEAD_SEQ_HEADER = "X-Dihya-Audit-Head-Seq"
"""The export's response header giving the log's head seq at its start (platform tokens only:
:func:`.decisions.sees_head`)."""


def _confined(principal: Principal, query: RecordQuery) -> RecordQuery:
    """``query`` as ``principal`` may run it; 404 for another tenant's records, exactly as
    for a tenant that does not exist."""
    mine = decisions.confine(query, principal.role, principal.tenant)
    if mine is None:
        raise error(404, "not_found", "No such tenant.")
    return mine


async def list_records(request: web.Request) -> web.Response:
    principal = await authorize(request, *RECORD_READERS)
    try:
        query = decisions.parse_query(request.query.items(), request.app[PAGE_LIMIT])
    except decisions.QueryError as exc:
        raise error(422, "invalid_query", "A query parameter is invalid.", exc.fields) from None
    query = _confined(principal, query)
    found, more = await request.app[STORE].page(query)
    return json_response({
        "records": [decisions.to_json(r) for r in found],
        "next_cursor": decisions.encode_cursor(found[-1]["seq"]) if more and found else None,
    })


async def export(request: web.Request) -> web.StreamResponse:
    """Every record matching the filters, streamed as JSON Lines or CSV, one page at a time."""
    principal = await authorize(request, *RECORD_READERS)
    try:
        query, fmt = exports.parse_export(request.query.items())
    except decisions.QueryError as exc:
        raise error(422, "invalid_query", "A query parameter is invalid.", exc.fields) from None
    query = _confined(principal, query)
    store = request.app[STORE]
    head = await store.head_seq()
    headers = {"Content-Disposition": f'attachment; filename="dihya-audit.{fmt}"'}
    if decisions.sees_head(principal.role):
        headers[HEAD_SEQ_HEADER] = str(head)
    response = web.StreamResponse(headers=headers)
    response.content_type = exports.CONTENT_TYPES[fmt]
    response.charset = "utf-8"

    async def body() -> AsyncIterator[bytes]:
        if fmt == "csv":
            yield exports.csv_header()
        async for page in store.pages(query, request.app[EXPORT_PAGE], upto=head):
            yield _encode(fmt, page)

    return await _stream(request, response, body(), what="export")


def _encode(fmt: Format, page: list[decisions.Record]) -> bytes:
    return exports.csv_rows(page) if fmt == "csv" else exports.jsonl(page)


async def _stream(request: web.Request, response: web.StreamResponse,
                  chunks: AsyncIterator[bytes], *, what: str) -> web.StreamResponse:
    """Send ``chunks`` with chunked encoding. Once the status line is out, an error can no
    longer become an error response: the connection is aborted instead, so the client sees a
    truncated transfer rather than a short file that looks complete."""
    response.enable_chunked_encoding()
    await response.prepare(request)
    sent = 0
    try:
        async for chunk in chunks:
            await response.write(chunk)
            sent += len(chunk)
    except Exception:
        log.exception(f"{what}_aborted", sent_bytes=sent)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    log.info(f"{what}_sent", sent_bytes=sent)
    return response


def _subject(request: web.Request) -> str:
    subject = request.match_info["subject"]
    if not sealing.valid_subject(subject) or not decisions.encodable(subject):
        raise error(422, "invalid_subject", "The subject id is not one the log can hold.",
                    [{"field": "subject", "message": "1 to 512 characters, no NUL"}])
    return subject


async def subject_export(request: web.Request) -> web.StreamResponse:
    """GDPR Art. 15 / 20: everything the log holds about one data subject, as one JSON
    document (streamed: records first, then the summary gathered on the way)."""
    await authorize(request, *READERS)
    subject = _subject(request)
    store = request.app[STORE]
    response = web.StreamResponse(headers={
        "Content-Disposition": 'attachment; filename="dihya-subject-export.json"'})
    response.content_type = "application/json"

    async def body() -> AsyncIterator[bytes]:
        summary = exports.SubjectSummary()
        yield exports.subject_head(subject, utcnow())
        first = True
        async for page in store.pages(RecordQuery(filters={"subject": subject}),
                                      request.app[EXPORT_PAGE]):
            for record in page:
                summary.feed(record)
            yield exports.subject_records(page, first)
            first = False
        yield summary.tail()

    return await _stream(request, response, body(), what="subject_export")


async def erase_subject(request: web.Request) -> web.Response:
    """GDPR Art. 17: make the subject's personal data unreadable everywhere in the log."""
    principal = await authorize(request, *ERASERS)
    subject = _subject(request)
    erasure = await request.app[STORE].erase(subject, actor=principal.token_id)
    log.info("subject_erased", subject_ref=erasure.subject_ref, records=erasure.records,
             record_seq=erasure.record_seq, actor=principal.token_id)
    announce = request.app[ANNOUNCE_ERASURE]
    if announce is not None:  # the other services' copies: ingest's stored payloads
        try:
            await announce(SubjectErasure(subject=subject, requested_by=principal.token_id,
                                          requested_at=utcnow()))
        except Exception as exc:
            log.error("erasure_not_announced", subject_ref=erasure.subject_ref,
                      error=type(exc).__name__)
            raise error(503, "broker_unavailable",
                        "The audit log erased the subject, but the other services (ingest's "
                        "stored payloads) could not be told: erase again (a second erasure "
                        "removes nothing more).") from None
    return json_response(erasure.as_json())


async def purge(request: web.Request) -> web.Response:
    """Run a retention purge now (it also runs every DIHYA_AUDIT_RETENTION_INTERVAL)."""
    principal = await authorize(request, *ERASERS)
    days = request.app[RETENTION_DAYS]
    if days <= 0:
        raise error(409, "retention_disabled",
                    "Retention is off (DIHYA_AUDIT_RETENTION_DAYS=0): every record is kept.")
    result = await request.app[STORE].purge(utcnow() - timedelta(days=days))
    log.info("retention_purged", deleted=result.deleted, actor=principal.token_id,
             last_seq=result.checkpoint.last_seq if result.checkpoint else None)
    heads = request.app[HEADS]
    if result.checkpoint and heads is not None:
        await heads.sign()  # the heads attest the new checkpoint at once
    return json_response(result.as_json())


async def verify(request: web.Request) -> web.Response:
    """Walk the chain; with heads, also report the newest signed head and whether the
    database still holds it (a truncated or rewritten log no longer does)."""
    await authorize(request, *READERS)
    store = request.app[STORE]
    report = (await store.verify()).as_json()
    heads = request.app[HEADS]
    head = heads.latest if heads is not None else None
    if heads is not None:
        report["heads"] = {"key_id": heads.signer.key_id, "public_key": heads.signer.public_b64,
                           "unpublished": heads.unpublished}
    report["signed_head"] = None
    if head is not None:
        matches = await store.matches(head)
        report["signed_head"] = {**{k: head[k] for k in ("seq", "head_hash", "time")},
                                 "matches": matches}
        if not matches and report["ok"]:
            report.update(ok=False, first_bad_seq=head["seq"], problem="signed_head_mismatch",
                          detail=decisions.PROBLEMS["signed_head_mismatch"])
    return json_response(report)


async def sign_head(request: web.Request) -> web.Response:
    """Sign a head now (it also happens every DIHYA_AUDIT_HEADS_INTERVAL) and publish it."""
    await authorize(request, *READERS)
    heads = request.app[HEADS]
    if heads is None:
        raise error(409, "heads_disabled", "This service signs no heads.")
    head = await heads.sign()
    return json_response({"head": dict(head), "unpublished": heads.unpublished})


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


MAX_PATH = 2048


class RefusalRecorder:
    """The ``on_refusal`` hook: record a refused access (who, where, why) as an
    ``access.refused`` fact handed to ``submit`` (the batch writer) — never the token itself."""

    def __init__(self, submit: Callable[[AuditFact], Awaitable[None]]) -> None:
        self._submit = submit

    async def __call__(self, request: web.Request, principal: Principal | None,
                       reason: str) -> None:
        fact = AuditFact(
            id=new_id("fct"),
            kind="access.refused",
            occurred_at=utcnow(),
            service="audit",
            actor=principal.token_id if principal else None,
            reason=reason,
            details={"path": _route_path(request), "method": request.method,
                     "role": principal.role if principal else None},
        )
        try:
            await self._submit(fact)
        except Exception:
            log.exception("refusal_not_recorded", path=fact.details["path"], reason=reason)


def _route_path(request: web.Request) -> str:
    """The path to record for a refused request: the route's template when it has variables
    (``/v1/audit/subjects/{subject}/export``), so a subject id never lands in the log in clear,
    where erasure could not reach it."""
    resource = request.match_info.route.resource
    if resource is not None and "{" in resource.canonical:
        return resource.canonical
    return _printable(request.rel_url.raw_path)


def _printable(text: str) -> str:
    """ASCII, NUL-free and bounded: a request path may hold anything a client typed."""
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")[
        :MAX_PATH
    ]


# -- the route table ----------------------------------------------------------------------

_READ_ERRORS = (401, 403, 422)
_RECORD_ERRORS = (401, 403, (404, "A tenant token named another tenant in `tenant`."), 422)
_SUBJECT_ERRORS = (401, 403, (422, "The subject id is invalid."))


def routes(page_limit: int) -> tuple[Route, ...]:
    """Every operation of the API (the router and the OpenAPI document both read it), for a
    service whose largest page is ``page_limit``."""
    return (
        Route("GET", "/v1/audit/records", "list_records",
              "Records matching every given filter, oldest first (by seq). A tenant token "
              "(`tenant_admin`, `tenant_viewer`) reads its own tenant's records only.",
              RECORD_READERS, query=models.records_query(page_limit),
              responses={200: models.RecordsPage}, errors=_RECORD_ERRORS,
              operation_id="listAuditRecords"),
        Route("GET", "/v1/audit/export", "export",
              "Every record matching the filters, streamed (chunked), oldest first; the log "
              "as of the request (newer records left out).",
              RECORD_READERS, query=models.ExportQuery,
              responses={200: Media("The records.", {
                  exports.CONTENT_TYPES["jsonl"]: models.AuditRecord,
                  exports.CONTENT_TYPES["csv"]: None})},
              errors=_RECORD_ERRORS, operation_id="exportAuditRecords",
              description="Memory stays flat whatever the size: records are read a page at a "
                          "time. If the export fails midway the connection is aborted, so a "
                          "truncated transfer is never mistaken for a complete file. "
                          "For a platform token (`auditor`, `admin`) `X-Dihya-Audit-Head-Seq` "
                          "gives the log's head seq at the start (records after it are left "
                          "out); a tenant token's export leaves the header out, because the "
                          "head counts every tenant's records."),
        Route("GET", SUBJECT_ROUTE + "/export", "subject_export",
              "GDPR Art. 15 / 20: every record about a data subject, as one machine-readable "
              "JSON document (streamed).",
              READERS, path_params=models.SubjectPath,
              responses={200: models.SubjectExport}, errors=_SUBJECT_ERRORS,
              operation_id="exportSubject",
              description="After an erasure it holds nothing personal: the subject can no "
                          "longer be found (its blind-index row is gone)."),
        Route("POST", SUBJECT_ROUTE + "/erasure", "erase_subject",
              "GDPR Art. 17: make the subject's personal data unreadable everywhere in the "
              "log (crypto-shredding; admin only).",
              ERASERS, path_params=models.SubjectPath, responses={200: models.Erasure},
              errors=(401, openapi.ADMIN_ONLY, (422, "The subject id is invalid."),
                      (503, "Erased here, but the other services could not be told: erase "
                            "again.")),
              operation_id="eraseSubject",
              description="Deletes the subject's key and blind-index row; records are not "
                          "touched, so `/verify` still says ok, and `/records` shows their "
                          "`personal` fields as `[erased]`. The erasure itself is recorded "
                          "(kind `subject.erased`, with the pseudonym, never the id). "
                          "Idempotent: erasing again, or an unknown subject, erases nothing "
                          "and is recorded too. Then the other services are told "
                          "(`subject.erase` on the control exchange): ingest removes the "
                          "subject's payloads from its message log."),
        Route("POST", "/v1/audit/retention/purge", "purge",
              "Retention: delete the records older than DIHYA_AUDIT_RETENTION_DAYS behind a "
              "signed checkpoint (admin only; it also runs periodically).",
              ERASERS, responses={200: models.Purge},
              errors=(401, openapi.ADMIN_ONLY,
                      (409, "Retention is off (0 days): nothing is ever purged.")),
              operation_id="purgeAuditRecords"),
        Route("GET", "/v1/audit/verify", "verify",
              "Walk the hash chain (from the retention checkpoint, if any, whose signature is "
              "checked too) and report the first bad record.",
              READERS, responses={200: models.VerifyReport}, errors=(401, 403),
              operation_id="verifyAuditChain"),
        Route("POST", "/v1/audit/heads", "sign_head",
              "Sign the chain's head now and publish it to the heads file and the "
              "`dihya.audit.heads` exchange (it also happens every DIHYA_AUDIT_HEADS_INTERVAL "
              "seconds).",
              READERS, responses={200: models.SignedHead},
              errors=(401, 403, (409, "This service signs no heads.")),
              operation_id="signAuditHead"),
        Route("GET", "/v1/openapi.json", "openapi_json", "This document.",
              responses={200: None}, operation_id="openapi"),
    )


_HANDLERS: Mapping[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
    handler.__name__: handler
    for handler in (list_records, export, subject_export, erase_subject, purge, verify,
                    sign_head, openapi_json)
}


def make_app(
    store: AuditStore,
    *,
    lookup: TokenLookup,
    on_refusal: RefusalHook,
    checks: Mapping[str, ReadinessCheck],
    page_limit: int,
    export_page: int = 1000,
    retention_days: int = 0,
    cors_origins: Sequence[str] = (),
    heads: Heads | None = None,
    announce_erasure: ErasureNotice | None = None,
) -> web.Application:
    app = web.Application(middlewares=[errors_middleware])
    app[ANNOUNCE_ERASURE] = announce_erasure
    app[STORE] = store
    app[PAGE_LIMIT] = page_limit
    app[EXPORT_PAGE] = export_page
    app[RETENTION_DAYS] = retention_days
    app[HEADS] = heads
    table = routes(page_limit)
    app[OPENAPI] = orjson.dumps(openapi.document(table))
    app[TOKEN_LOOKUP] = lookup
    app[REFUSAL_HOOK] = on_refusal
    for route in table:
        if route.method == "GET":  # HEAD too
            app.router.add_get(route.path, _HANDLERS[route.handler])
        else:
            app.router.add_route(route.method, route.path, _HANDLERS[route.handler])
    add_ops_routes(app, checks)
    allow_cors(app, cors_origins)
    return app


CORS_EXPOSED = ("Content-Disposition", HEAD_SEQ_HEADER)
CORS_MAX_AGE = 600
"""Seconds a browser may reuse a preflight answer."""


def allow_cors(app: web.Application, origins: Sequence[str]) -> None:
    """Let pages of ``origins`` (the web console) read this API from a browser: preflights
    allow the ``Authorization`` header for GET; answers to a listed origin name it in
    ``Access-Control-Allow-Origin``; any other origin gets no CORS header at all (and a
    refused preflight), so its pages cannot read anything. No cookies are involved (the token
    travels in the header), hence no credentials mode."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False, allow_headers=("Authorization",), allow_methods=("GET",),
        expose_headers=CORS_EXPOSED, max_age=CORS_MAX_AGE)
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        if route.method == "GET":
            cors.add(route)
