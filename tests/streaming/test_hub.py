"""StreamHub in-process, with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import TooManyStreams
from app.streaming import events
from app.streaming.hub import StreamHub
from config.settings import Settings
from tests.clock import FakeClock


def hub(clock: FakeClock | None = None, **overrides: object) -> StreamHub:
    settings = Settings(**overrides)  # type: ignore[arg-type]
    return StreamHub(settings, clock=clock or FakeClock())


async def test_caps_per_tenant_and_per_worker() -> None:
    streams = hub(stream_max_per_tenant=2, stream_max_per_worker=3, stream_retry_after_s=4)
    a1, _ = streams.open("a", "t1"), streams.open("a", "t2")
    with pytest.raises(TooManyStreams) as refused:
        streams.open("a", "t3")
    assert refused.value.headers == {"Retry-After": "4"}
    streams.open("b", "t1")
    with pytest.raises(TooManyStreams, match="worker"):
        streams.open("c", "t1")

    async def producer() -> None:
        await a1.emit(events.done({}))

    streams.start(a1, producer())
    assert a1.task is not None
    await a1.task
    await asyncio.sleep(0)
    assert len(streams) == 2
    streams.open("a", "t3")  # room again for tenant a


async def test_a_full_queue_past_the_timeout_becomes_one_error_event() -> None:
    streams = hub(stream_queue_size=5, stream_send_timeout_s=0.05)
    stream = streams.open("a", "t")
    for i in range(5):
        await stream.emit(events.token(str(i)))
    await stream.emit(events.token("one too many"))  # waits 50 ms, then gives up
    assert stream.ended == "slow_consumer"
    assert stream.queue.qsize() == 1
    [final] = await stream.next_events(10)
    assert final.event.event == "error" and final.event.data["code"] == "slow_consumer"
    # about this connection, not the turn: no id, so a rejoin resumes after event 5
    assert final.wire.startswith(b"event: error\r\n")
    await stream.emit(events.token("dropped"))
    assert stream.queue.empty()
    assert streams.watermark.high == 5


async def test_detach_frees_the_queue_and_cancels_only_when_configured() -> None:
    for cancel in (False, True):
        streams = hub(cancel_on_disconnect=cancel)
        stream = streams.open("a", "t")
        release = asyncio.Event()

        async def producer() -> None:
            await stream.emit(events.token("x"))  # noqa: B023
            await release.wait()  # noqa: B023

        streams.start(stream, producer())
        await asyncio.sleep(0)
        streams.detach(stream)
        assert stream.ended == "disconnected" and stream.queue.empty()
        await asyncio.sleep(0)
        assert stream.task is not None and stream.task.cancelled() is cancel
        release.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(streams) == 0


async def test_sweep_ends_streams_past_their_maximum_age() -> None:
    clock = FakeClock()
    streams = hub(clock, stream_max_age_s=60)
    old = streams.open("a", "old")
    clock.now += 30
    young = streams.open("a", "young")
    clock.now += 31
    assert streams.sweep() == 1
    assert old.ended == "expired" and young.ended is None
    [expired] = await old.next_events(10)
    assert expired.event.data["code"] == "stream_expired" and expired.wire.startswith(b"id: ")
    stats = streams.stats()
    assert stats["active"] == 2 and stats["oldest_age_s"] == 61
    assert stats["tenants_streaming"] == 1


async def test_shutdown_waits_for_running_turns_then_cancels() -> None:
    streams = hub()
    quick, stuck = streams.open("a", "quick"), streams.open("a", "stuck")
    finished = []

    go = asyncio.Event()

    async def run_quick() -> None:
        await go.wait()
        finished.append("quick")

    streams.start(quick, run_quick())
    streams.start(stuck, asyncio.Event().wait())  # never finishes
    go.set()  # quick can finish at the loop's next turn, long before the grace ends
    await streams.aclose(grace_s=1)
    assert finished == ["quick"]
    assert stuck.task is not None and stuck.task.cancelled()
    assert stuck.ended == "cancelled"


async def test_queued_events_are_taken_together_up_to_the_final_one() -> None:
    streams = hub()
    stream = streams.open("a", "t")
    for i in range(5):
        await stream.emit(events.token(str(i)))
    await stream.emit(events.done({}))
    first = await stream.next_events(3)
    rest = await stream.next_events(10)
    assert [q.event.data.get("text") for q in first] == ["0", "1", "2"]
    assert [q.event.event for q in rest] == ["token", "token", "done"]
    turn = stream.recorder.turn
    wire = b"".join(q.wire for q in first)
    assert wire.startswith(b'id: %d-1\r\nevent: token\r\ndata: {"text":"0"}\r\n\r\nid: %d-2\r\n'
                           % (turn, turn))


async def test_a_send_pending_past_the_cutoff_is_cancelled_once() -> None:
    clock = FakeClock()
    streams = hub(clock, stream_send_cutoff_s=6)
    assert streams.send_cutoff_s == 6
    stream = streams.open("a", "t")
    streams.attach(stream)
    never = asyncio.get_running_loop().create_future()

    async def stuck_send() -> None:
        await never

    sender = asyncio.get_running_loop().create_task(stuck_send())
    await asyncio.sleep(0)
    stream.pending_sends[sender] = clock.now
    clock.now += 5.9
    assert streams.cut_stuck_sends() == 0 and not sender.cancelled()
    clock.now += 0.2
    assert streams.cut_stuck_sends() == 1
    assert streams.cut_stuck_sends() == 0  # already cut: not again
    with pytest.raises(asyncio.CancelledError):
        await sender
    assert sender in stream.expired_sends
    streams.detach(stream)
    assert streams.stats()["reading"] == 0
