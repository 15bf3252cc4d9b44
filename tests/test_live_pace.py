"""The server's measure of how far behind real time a live stream's processing is
(``server.live.Pace``): only its own backlog counts, so partials are shed when the server
cannot keep up and never because of the client or the network."""

from __future__ import annotations

import pytest

from speakerid.server.live import SHED_AFTER, Pace


def feed(pace: Pace, arrivals: list[tuple[float, float]], seconds: float = 0.1) -> list[float]:
    """``arrivals``: (time the server asked for the message, time it got it)."""
    return [pace.behind(got, got - asked, seconds) for asked, got in arrivals]


def test_a_server_that_keeps_up_is_never_behind():
    # real time: each 0.1 s message arrives 0.1 s after the last; the server waits for each
    lates = feed(Pace(), [(0.1 * k + 0.03, 0.1 * k + 0.1) for k in range(50)])
    assert max(lates) == 0.0


def test_a_backlog_makes_the_stream_late_by_what_queued():
    # the server needs 0.3 s per 0.1 s message: after the first, every message is waiting
    pace = Pace()
    t, lates = 0.0, []
    for k in range(10):
        got = max(t, 0.1 * k)
        asked = t
        lates.append(pace.behind(got, got - asked, 0.1))
        t = got + 0.3
    assert lates[0] == 0.0
    assert lates[-1] == pytest.approx(9 * 0.2)  # 0.2 s more behind with every message
    assert lates[3] > SHED_AFTER  # partials are shed from the fourth message on


def test_waiting_for_the_client_starts_the_count_again():
    # a network stall of 2 s, then real time again: the server waited, so it is not behind
    arrivals = [(0.0, 0.1), (0.1, 0.2), (0.2, 2.2), (2.21, 2.3), (2.31, 2.4)]
    assert feed(Pace(), arrivals) == [0.0, 0.0, 0.0, 0.0, 0.0]


def test_a_file_sent_faster_than_real_time_is_never_behind():
    # a client pushes 1 s messages as fast as it can; the server takes 0.05 s for each
    pace = Pace()
    lates = [pace.behind(0.05 * k, 0.0 if k else 0.0, 1.0) for k in range(20)]
    assert max(lates) == 0.0
