"""Dihya's benchmark harness: ``python -m bench`` (or ``bin/bench``).

It starts Dihya (four services, N processes each) on a throw-away RabbitMQ vhost, a verifying
sink receiver in its own process, and a bare "raw chain" (publisher → HMAC relay → aiohttp
poster → sink) that does the same work as simply as possible, then drives both with the same
load generator and writes ``results.json`` and ``latency_vs_load.png``. See README, Benchmark.
"""
