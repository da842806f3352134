"""A deliverer SIGKILLed between its POST and the outcome's confirm: the POST is still audited
(issue #17). Real parts: the deliverer as a process of its own (so that SIGKILL is real), audit
in-process with a 3 s outcome timeout, the test broker, a receiver on 127.0.0.1.

The receiver holds the first POST until the test has killed the deliverer: that POST has left
and its outcome can never be published. A new deliverer gets the job again (its message was
never acked) and POSTs it again. Books: two POSTs, two ``delivery.attempted`` records — the
first ``unknown`` (``deliverer_stopped``), from the write-ahead; the second ``delivered``,
marked as a repeat.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from launcher.processes import System
from services.audit.decisions import REPEAT_KEY, UNKNOWN_OUTCOME, UNKNOWN_REASON
from shared.broker import Publisher, connect
from tests.conftest import free_port, wait_for
from tests.integration.test_audit_service import running, settings_for
from tests.integration.test_deliverer_service import hand_over, make_job, signed_for

pytestmark = pytest.mark.integration


class HoldingReceiver:
    """Counts POSTs; holds the first until :attr:`release` is set."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts = 0
        self.first_arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        if self.posts == 1:
            self.first_arrived.set()
            await self.release.wait()
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[HoldingReceiver]:
    rec = HoldingReceiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec.port).start()
    yield rec
    rec.release.set()
    await runner.cleanup()


async def test_a_post_of_a_killed_deliverer_is_audited_as_unknown(
        vhost_url: tuple[str, str], receiver: HoldingReceiver) -> None:
    # a virtual host of its own: on the suite's shared one, audit would first store every
    # fact earlier tests left in its queue (40 s late in a full run)
    amqp_url = vhost_url[0]
    with tempfile.TemporaryDirectory() as tmp:
        system = System(amqp_url, Path(tmp) / "services",
                        env={"DIHYA_DELIVERER_TIMEOUT": "30"})
        settings = settings_for(amqp_url, f"sqlite:///{Path(tmp) / 'audit.db'}",
                                outcome_timeout=3.0)
        async with running(settings) as audit:
            system.spawn("deliverer")
            try:
                await system.wait_ready("deliverer", timeout=60)
                connection = await connect(amqp_url, service="kill-test")
                publisher = await Publisher.open(connection)
                job = make_job(f"http://127.0.0.1:{receiver.port}/hook")
                await hand_over(publisher, signed_for(job))
                await asyncio.wait_for(receiver.first_arrived.wait(), timeout=60)
                system.kill("deliverer", signal.SIGKILL)  # the POST is out, no outcome yet
                await asyncio.to_thread(system.procs["deliverer"].wait, 10)
                receiver.release.set()
                system.spawn("deliverer")  # the job comes back to it: a second POST
                await wait_for(lambda: receiver.posts >= 2, timeout=60)

                async def both_recorded() -> bool:
                    return len(await audit.records(kind="delivery.attempted",
                                                   delivery_id=job.delivery_id)) >= 2

                await wait_for(both_recorded, timeout=60)
                await asyncio.sleep(2)  # anything more would show now (it must not)
                records = await audit.records(kind="delivery.attempted",
                                              delivery_id=job.delivery_id)
                await publisher.close()
                await connection.close()
            finally:
                await system.stop(timeout=10)
    outcomes = sorted((r["outcome"], r["reason"]) for r in records)
    repeats = sum(bool(r["details"].get(REPEAT_KEY)) for r in records)
    print(f"\nbooks: POSTs {receiver.posts}, audit records {len(records)} {outcomes}, "
          f"marked repeat {repeats}")
    assert receiver.posts == len(records) == 2
    assert outcomes == [("delivered", "ok"), (UNKNOWN_OUTCOME, UNKNOWN_REASON)]
    assert repeats == 1  # whichever was recorded second: one attempt, POSTed twice
