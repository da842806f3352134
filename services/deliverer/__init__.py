"""Deliverer: POSTs each signed delivery to its endpoint and decides what happens next.

It receives ``SignedDelivery`` messages (exact body and headers, signed by the signer), makes
one HTTP attempt (one shared connection pool, a per-host connection cap, timeouts, never a
redirect, destination addresses vetted against SSRF), records the attempt for the audit log and
then: done (2xx); back to the signer through a delay-tier wait queue for a retryable failure, so
the retry is re-signed with a fresh timestamp and nonce; or parked in the dead-letter queue with
its full attempt history when the failure is permanent or the retry schedule is exhausted.
A delivery whose endpoint already has too many in flight is not attempted: it waits in a defer
tier and comes back to the deliverer still signed (re-signed only if it has grown too old).
"""
