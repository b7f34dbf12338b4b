"""Acknowledgement bookkeeping and merging (pure, no I/O)."""

from __future__ import annotations

from flagwire_server.store.acks import AckBook, merge_reports
from flagwire_server.stream.frames import frame_of, payload_of


def test_book_counts_acks_latency_and_losses() -> None:
    book = AckBook("production")
    book.sent(5, 3, t_ms=1000)
    book.sent(6, 3, t_ms=1010)
    # One connection acks both at once (coalesced), one acks 5 only, one leaves.
    assert len(book.acked(4, 6, now_ms=1020)) == 2
    book.acked(4, 5, now_ms=1030)
    book.lost(5)  # the second connection leaves having acked 5
    book.lost(4)  # the third never acked
    t5, t6 = book.tallies[5], book.tallies[6]
    assert (t5.sent, t5.acked, t5.lost) == (3, 2, 1)
    assert (t6.sent, t6.acked, t6.lost) == (3, 1, 2)
    assert t5.lat_us == [20_000, 30_000]
    assert book.dirty == {5, 6}


def test_book_keeps_a_bounded_number_of_versions() -> None:
    book = AckBook("e")
    for v in range(1, 1000):
        book.sent(v, 1, 0)
    assert len(book.tallies) == 256
    assert min(book.tallies) == 1000 - 256


def test_merge_over_instances() -> None:
    reports = {
        "a": {"sent": 2, "acked": 2, "lost": 0, "lat_us": [1000, 3000]},
        "b": {"sent": 1, "acked": 0, "lost": 0, "lat_us": []},
    }
    result = merge_reports(7, reports, live={"a", "b"})
    assert result["connected"] == 3
    assert result["acknowledged"] == 2
    assert result["complete"] is False
    assert result["max_ms"] == 3.0
    assert result["instances"] == 2
    # b died: its unacknowledged client is lost, and the change is complete.
    done = merge_reports(7, reports, live={"a"})
    assert done["complete"] is True
    assert done["lost"] == 1
    # A live instance that has not reported yet keeps it incomplete.
    assert merge_reports(7, {"a": reports["a"]}, live={"a", "c"})["complete"] is False
    assert merge_reports(7, {}, live={"a"})["complete"] is False


def test_frames_round_trip_for_every_length_class() -> None:
    for n in (0, 125, 126, 65535, 65536, 200_000):
        payload = b"x" * n
        frame = frame_of(payload)
        assert frame[0] == 0x81  # FIN + text
        assert payload_of(frame) == payload


def test_instances_that_loaded_the_env_later_are_not_waited_for() -> None:
    reports = {"a": {"sent": 1, "acked": 1, "lost": 0, "lat_us": [500]}}
    # "b" is live but loaded the environment at or after this version: not required.
    result = merge_reports(7, reports, live={"a", "b"}, required={"a"})
    assert result["complete"] is True
    # Nobody had the environment loaded before this version: trivially complete.
    assert merge_reports(7, {}, live={"a"}, required=set())["complete"] is True
