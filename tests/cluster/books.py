"""The books of a fault scenario: what was accepted, delivered, lost, duplicated, parked.

Pure functions over what the load generator and the receiver recorded, so that the arithmetic
has unit tests of its own (tests/unit/test_cluster_books.py) and every scenario prints the
same table.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Arrival:
    """One POST the receiver got: when, the ``webhook-id`` header, and the payload's ids."""

    at: float
    webhook_id: str
    event_id: str
    logical: str
    """The client's own name for the event (one per thing it meant to publish once)."""


@dataclass(frozen=True)
class Books:
    scenario: str
    accepted: int
    delivered: int
    lost: int
    dup_same_id: int
    dup_new_id: int
    foreign_ids: int
    parked: int
    posts: int
    audited: int
    stall: float
    http_5xx: int
    unknown: int = 0
    """Of ``audited``: records of a POST whose outcome never came (its deliverer was killed
    after the write-ahead). Each stands for a POST that may or may not have left."""
    dup_new_id_keyless: int = 0
    """New ids of keyless HTTP events the client sent again after getting no answer at all:
    two requests the API cannot tell apart, the client's duplicate (not in ``dup_new_id``)."""

    HEADER = (f"{'scenario':<24} {'accepted':>8} {'delivered':>9} {'lost':>4} {'dup=id':>6} "
              f"{'dup≠id':>6} {'parked':>6} {'POSTs':>6} {'audited':>7} {'unknown':>7} "
              f"{'stall s':>7} {'503s':>5}")

    def row(self) -> str:
        return (f"{self.scenario:<24} {self.accepted:>8} {self.delivered:>9} {self.lost:>4} "
                f"{self.dup_same_id:>6} {self.dup_new_id:>6} {self.parked:>6} "
                f"{self.posts:>6} {self.audited:>7} {self.unknown:>7} {self.stall:>7.1f} "
                f"{self.http_5xx:>5}")

    def failures(self, max_stall: float) -> list[str]:
        """What breaks the scenario's promises (empty: it passed)."""
        found = []
        for name in ("lost", "dup_new_id", "foreign_ids", "parked"):
            if getattr(self, name):
                found.append(f"{name}={getattr(self, name)}")
        # every POST has its record; beyond them, only "unknown" ones (a POST that may not
        # have left: a deliverer killed between the write-ahead's confirm and the POST)
        if not self.posts <= self.audited <= self.posts + self.unknown:
            found.append(f"audited={self.audited} (unknown {self.unknown}) != "
                         f"POSTs={self.posts}")
        if self.stall > max_stall:
            found.append(f"stall {self.stall:.1f} s > {max_stall} s")
        return found


def longest_gap(times: Iterable[float], start: float, end: float) -> tuple[float, float]:
    """Where the longest stretch of ``[start, end]`` without an arrival begins and ends."""
    points = sorted(t for t in times if start <= t <= end)
    edges = [start, *points, end]
    return max(itertools.pairwise(edges), key=lambda gap: gap[1] - gap[0],
               default=(start, start))


def longest_stall(times: Iterable[float], start: float, end: float) -> float:
    """The longest stretch of ``[start, end]`` without an arrival."""
    begin, finish = longest_gap(times, start, end)
    return finish - begin


def keep(scenario: str, accepted: Mapping[str, set[str]], arrivals: list[Arrival], *,
         parked: int, audited: int, http_5xx: int, window: tuple[float, float],
         unknown: int = 0, unanswered_keyless: Iterable[str] = ()) -> Books:
    """The books of one scenario.

    ``accepted``: logical event → the ids the client was told were accepted (202 or a
    confirm; more than one means the client was handed a new id for the same event).
    ``window``: the stretch the stall is measured over — from the fault until the last
    accepted event arrived. ``unanswered_keyless``: keyless HTTP events sent again after no
    answer (their extra ids are counted apart, as the client's duplicates).
    """
    keyless = set(unanswered_keyless)
    delivered_ids: dict[str, set[str]] = defaultdict(set)
    for a in arrivals:
        delivered_ids[a.logical].add(a.event_id)
    delivered = sum(1 for name in accepted if delivered_ids.get(name))
    return Books(
        scenario=scenario,
        accepted=len(accepted),
        delivered=delivered,
        lost=len(accepted) - delivered,
        dup_same_id=len(arrivals) - len({a.webhook_id for a in arrivals}),
        dup_new_id=sum(len(ids) - 1 for name, ids in delivered_ids.items()
                       if ids and name not in keyless),
        dup_new_id_keyless=sum(len(ids) - 1 for name, ids in delivered_ids.items()
                               if ids and name in keyless),
        foreign_ids=sum(1 for a in arrivals if a.webhook_id != a.event_id
                        or a.logical not in accepted),
        parked=parked,
        posts=len(arrivals),
        audited=audited,
        stall=longest_stall((a.at for a in arrivals), *window),
        http_5xx=http_5xx,
        unknown=unknown,
    )
