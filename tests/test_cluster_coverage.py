"""How bench/cluster_faults.py counts lost heartbeats: from the sequence ranges each pop-load
says it aggregated (pure)."""

from __future__ import annotations

from bench.cluster_faults import Coverage


def test_every_heartbeat_counted_once_or_more_is_not_lost() -> None:
    c = Coverage()
    c.add(1, 2, 2)
    c.add(3, 3, 1)
    c.add(3, 4, 2)  # a re-read after a takeover counts 3 again: still nothing lost
    assert c.lost(4) == 0


def test_a_gap_is_lost_until_a_later_pop_load_counts_it() -> None:
    c = Coverage()
    c.add(1, 2, 2)
    c.add(6, 7, 2)  # 3..5 not counted (yet)
    assert c.lost(7) == 3
    c.add(3, 4, 2)  # the partition's next owner re-read 3 and 4
    assert c.lost(7) == 1
    assert c.gaps == [[5, 5]]


def test_what_was_sent_but_never_reported_is_lost() -> None:
    c = Coverage()
    c.add(1, 3, 3)
    assert c.lost(5) == 2  # 4 and 5 were sent, no pop-load has them
    assert Coverage().lost(3) == 3  # a server never reported at all


def test_a_span_that_aggregated_fewer_than_it_covers_counts_the_rest_lost() -> None:
    c = Coverage()
    c.add(1, 4, 3)  # 1..4 but only three heartbeats taken: one fell out of order
    assert c.lost(4) == 1
