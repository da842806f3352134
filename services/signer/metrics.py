"""Prometheus metrics of the signer (served on ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS = Counter("dihya_signer_jobs_total", "Delivery jobs handled by the signer.",
               ["result", "reason"])
SIGNED = JOBS.labels("signed", "")
CONTROL = Counter("dihya_signer_control_total", "Secret control messages handled.",
                  ["action", "result"])
SECRET_WAIT = Histogram("dihya_signer_secret_wait_seconds",
                        "How long jobs waited for their endpoint's secret to arrive.",
                        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
