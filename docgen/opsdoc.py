"""The generated parts of the runbook, ``docs/operations.md``.

``python -m docgen.opsdoc`` rewrites each block between ``<!-- ops:NAME:start -->`` and
``<!-- ops:NAME:end -->`` markers: the RabbitMQ queues (from
:mod:`shared.topology`) and the retry tiers (from the deliverer's default schedule). A test
fails when the runbook and the code disagree, so operators never read a queue or a delay the
services no longer have.
"""

from __future__ import annotations

from collections.abc import Callable

from docgen import envdoc
from shared import topology

OPERATIONS = envdoc.ROOT / "docs" / "operations.md"

CONSUMERS: dict[str, str] = {
    topology.INGEST_EVENTS: "ingest",
    topology.SIGNER_JOBS: "signer",
    topology.SIGNER_CONTROL: "signer",
    topology.DELIVERER_JOBS: "deliverer",
    topology.AUDIT_FACTS: "audit",
    topology.AUDIT_CONTROL: "audit",
    topology.INGEST_HEALTH: "ingest (endpoint health)",
    topology.INGEST_CONTROL: "ingest (GDPR erasure of stored payloads)",
    **{q.name: "deliverer (rate-limited endpoints; one active consumer among the replicas)"
       for q in topology.PACED_QUEUES},
    **{q.name: "deliverer (ordered endpoints, docs/ordering.md; one active consumer among the "
               "replicas)" for q in topology.FIFO_QUEUES},
    topology.SIGN_NOW: "signer (sign-now requests of ordered endpoints; answers over direct "
                       "reply-to)",
    topology.dead_queue(topology.SIGNER_JOBS): "ingest (into its dead-letter store)",
    topology.dead_queue(topology.DELIVERER_JOBS): "ingest (into its dead-letter store)",
    topology.AUDIT_HEADS: "auditors, SIEMs (the newest signed heads; bind a queue of your own "
                          "to keep every head)",
    topology.CATCH_UP: "deliverer, with DIHYA_DELIVERER_CATCH_UP on (catch-up requests; one "
                       "active consumer among the replicas; a request failing 10 times is "
                       "dropped)",
}
"""Who consumes each queue of the shared topology; a queue missing here is read by nobody
(a parking queue waiting for an operator). A test checks that every work queue has one."""

_EXCHANGE_PURPOSE = {
    topology.EVENTS_EXCHANGE: "domain events from the platform; routing key = event type",
    topology.WORK_EXCHANGE: f"delivery work: `{topology.SIGN}` → signer, "
    f"`{topology.DELIVER}` → deliverer, `{topology.paced_key(0)}`…"
    f"`{topology.paced_key(topology.PACED_SHARDS - 1)}` → the paced queues (rate-limited "
    f"endpoints), `{topology.fifo_key(0)}`…`{topology.fifo_key(topology.FIFO_LANES - 1)}` → "
    f"the FIFO lanes (ordered endpoints), `{topology.SIGN_NOW}` → signer (sign-now requests), "
    f"`{topology.CATCH_UP_KEY}` → deliverer (catch-up requests)",
    topology.AUDIT_EXCHANGE: "audit facts; routing key = fact kind",
    topology.AUDIT_HEADS_EXCHANGE: "signed heads of the audit chain, to every bound queue",
    topology.CONTROL_EXCHANGE: "control messages: `secret.*` → signer, `token.*` → audit",
    topology.DEAD_EXCHANGE: "parked messages; routing key = the queue they came from",
    topology.RETRY_EXCHANGE: "delayed retries (to the signer) and deferrals (to the deliverer); "
    "routing key = the wait queue of the tier (or its catch-up side queue)",
}


def _duration(ms: int) -> str:
    """``6250`` → ``6.25 s``, ``375000`` → ``6 min 15 s``, ``9000000`` → ``2 h 30 min``."""
    if ms < 60_000:
        return f"{ms / 1000:g} s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "",
             f"{rest / 1000:g} s" if rest else ""]
    return " ".join(p for p in parts if p)


def _arguments(arguments: dict[str, object]) -> str:
    parts = []
    if "x-delivery-limit" in arguments:
        parts.append(f"delivery limit {arguments['x-delivery-limit']}")
    if "x-message-ttl" in arguments:
        parts.append(f"TTL {_duration(int(str(arguments['x-message-ttl'])))}")
    if "x-max-length" in arguments:
        parts.append(f"keeps the newest {int(str(arguments['x-max-length'])):,} "
                     f"({arguments.get('x-overflow', 'drop-head')})")
    if "x-dead-letter-exchange" in arguments:
        parts.append(f"dead-letters to `{arguments['x-dead-letter-exchange']}` / "
                     f"`{arguments['x-dead-letter-routing-key']}`")
    return ", ".join(parts) or "—"


_EXPIRES_TO = {topology.SIGN: "signer", topology.DELIVER: "deliverer"}


def render_topology() -> str:
    """Exchanges and queues of the shared topology, with who consumes each queue."""
    lines = ["| exchange | type | carries |", "|---|---|---|"]
    lines += [f"| `{e.name}` | {e.type} | {_EXCHANGE_PURPOSE[e.name]} |"
              for e in topology.EXCHANGES]
    lines += ["", "| queue | bound with | arguments | consumed by |", "|---|---|---|---|"]
    for queue in topology.queues(topology.DEFAULT_RETRY_DELAYS_MS,
                                 topology.DEFAULT_DEFER_DELAYS_MS):
        bindings = ", ".join(f"`{ex}` / `{key}`" for ex, key in queue.bindings)
        # a wait queue is one whose messages expire: to whom, its dead-letter key says
        back_to = _EXPIRES_TO.get(queue.arguments.get("x-dead-letter-routing-key", ""))
        if "x-message-ttl" in queue.arguments and back_to:
            consumer = f"nobody: messages expire back to the {back_to}"
        else:
            consumer = CONSUMERS.get(queue.name, "nobody: waits for an operator")
        lines.append(f"| `{queue.name}` | {bindings} | {_arguments(queue.arguments)} | "
                     f"{consumer} |")
    return "\n".join(lines) + "\n"


def render_retry() -> str:
    """The default retry schedule as wait-queue tiers (from the deliverer's settings)."""
    from services.deliverer.settings import Settings
    from shared.schedules import parse_schedule

    fields = Settings.model_fields
    schedule = str(fields["retry_schedule"].default)
    jitter = float(fields["retry_jitter"].default)
    delays = parse_schedule(schedule)
    lines = [
        f"Default `DIHYA_DELIVERER_RETRY_SCHEDULE={schedule}`, jitter ±{jitter:.0%}: "
        f"{len(delays) + 1} attempts.",
        "",
        "| after failed attempt | waits | in queue | queue TTL |",
        "|---|---|---|---|",
    ]
    for attempt, delay in enumerate(delays, start=1):
        low, high = round(delay * (1 - jitter)), round(delay * (1 + jitter))
        lines.append(f"| {attempt} | {_duration(delay)} ({_duration(low)} to {_duration(high)})"
                     f" | `{topology.retry_queue(delay)}` | "
                     f"{_duration(topology.tier_ttl(delay))} |")
    lines.append(f"| {len(delays) + 1} | given up: parked in "
                 f"`{topology.dead_queue(topology.DELIVERER_JOBS)}` | | |")
    defer = parse_schedule(str(fields["defer_delay"].default))[0]
    longest = parse_schedule(str(fields["defer_max"].default))[0]
    tiers = topology.defer_tiers(defer, longest)
    lines += ["", f"A delivery deferred because its endpoint has too many in flight waits "
              f"`DIHYA_DELIVERER_DEFER_DELAY` ({_duration(defer)}) in "
              f"`{topology.defer_queue(defer)}` without using an attempt, and comes back to the "
              f"deliverer still signed; each further deferral "
              f"of the same attempt waits twice as long, up to `DIHYA_DELIVERER_DEFER_MAX` "
              f"({_duration(longest)}): "
              + ", ".join(f"`{topology.defer_queue(t)}`" for t in tiers) + ". One that has "
              "grown older than `DIHYA_DELIVERER_RESIGN_AFTER` meanwhile goes to the signer "
              "first."]
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[], str]] = {
    "topology": render_topology,
    "retry": render_retry,
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- ops:{name}:start -->", f"<!-- ops:{name}:end -->"


def updated(text: str) -> str:
    """``text`` with every generated block rendered anew (blocks without markers are left)."""
    for name, render in BLOCKS.items():
        start, end = markers(name)
        before, found, rest = text.partition(start)
        if not found:
            continue
        _, _, after = rest.partition(end)
        text = f"{before}{start}\n{render()}{end}{after}"
    return text


if __name__ == "__main__":
    OPERATIONS.write_text(updated(OPERATIONS.read_text()))
    print(f"updated {OPERATIONS}")
