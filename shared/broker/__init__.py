"""RabbitMQ adapter shared by every service: connect, declare, publish with confirms, consume.

The rules it encodes (field notes; RabbitMQ reliability guide):

* every message is persistent and published ``mandatory`` with publisher confirms awaited, an
  unroutable message raises (``on_return_raises``) and every publish has a timeout, so a
  publish never hangs across a reconnect;
* every message gets a fresh ``message_id`` (aiormq matches returns by it); the business id
  travels in the body or a header;
* a consumed message is acked only after its handler returned, i.e. after everything it
  published was confirmed; a handler that raises gets the message requeued, and the queue's
  delivery limit parks a message that keeps failing;
* after a reconnect, a delivery tag of the old channel is void: acking it fails, and the broker
  redelivers the message instead — that is the at-least-once path, never a loss.

One module per job: :mod:`~shared.broker.adapter` (connect, declare),
:mod:`~shared.broker.publisher` (publish and confirms), :mod:`~shared.broker.facts` (audit facts
in batches), :mod:`~shared.broker.consumer`, :mod:`~shared.broker.take` (a bounded read, for
sweeps); :mod:`~shared.broker.paths` decides between the
fast path and the plain one, and :mod:`~shared.broker.fastpath` holds every use of a library's
internals (and nothing else does).
"""

from shared.broker.adapter import (
    CONNECT_TIMEOUT,
    RECONNECT_INTERVAL,
    connect,
    declare,
    declare_queue,
    declare_topology,
)
from shared.broker.consumer import (
    OUTAGE_FIRST,
    OUTAGE_MAX,
    PROBE_TIMEOUT,
    REQUEUE_FIRST,
    REQUEUE_MAX,
    SUSPECT_AFTER,
    Consumer,
    Delivery,
    Handler,
    Probe,
    requeue_delay,
)
from shared.broker.facts import FACT_LINGER, FactPublisher
from shared.broker.publisher import RESTORE_POLL, Publisher, confirm_all
from shared.broker.take import ready_count, take

__all__ = [
    "CONNECT_TIMEOUT",
    "FACT_LINGER",
    "OUTAGE_FIRST",
    "OUTAGE_MAX",
    "PROBE_TIMEOUT",
    "RECONNECT_INTERVAL",
    "REQUEUE_FIRST",
    "REQUEUE_MAX",
    "RESTORE_POLL",
    "SUSPECT_AFTER",
    "Consumer",
    "Delivery",
    "FactPublisher",
    "Handler",
    "Probe",
    "Publisher",
    "confirm_all",
    "connect",
    "declare",
    "declare_queue",
    "declare_topology",
    "ready_count",
    "requeue_delay",
    "take",
]
