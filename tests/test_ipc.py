import random

import pytest

from ehc.wire.checks import Tcp
from ehc.wire.frames import HEADER, MAX_FRAME, FrameDecoder, FrameEncoder, FrameError
from ehc.wire.messages import FromWorker, Health, Hello, Transition, Transitions


def _transition(i: int) -> Transition:
    return Transition(f"ns/pod-{i}", Health.UNHEALTHY, Tcp(8080), "timeout", 0.5, 4, 1.0 + i)


def test_partial_reads_byte_by_byte_and_random_chunks() -> None:
    enc = FrameEncoder()
    messages = [
        Hello(worker=0, pid=1, probers="raw"),
        Transitions(items=[_transition(i) for i in range(50)]),
    ] * 3
    stream = b"".join(enc.encode(m) for m in messages)
    for chunker in (lambda: 1, lambda: random.randint(1, 700)):
        dec = FrameDecoder(FromWorker)
        out, pos = [], 0
        while pos < len(stream):
            n = chunker()
            out += dec.feed(stream[pos : pos + n])
            pos += n
        assert out == messages
        assert dec.pending == 0


def test_large_batch_in_one_frame() -> None:
    batch = Transitions(items=[_transition(i) for i in range(100_000)])
    frame = FrameEncoder().encode(batch)
    assert len(frame) > 1_000_000
    dec = FrameDecoder(FromWorker)
    assert dec.feed(frame[:65536]) == []
    assert dec.feed(frame[65536:]) == [batch]


def test_garbage_payload_is_a_frame_error() -> None:
    dec = FrameDecoder(FromWorker)
    with pytest.raises(FrameError, match="undecodable frame"):
        dec.feed(HEADER.pack(3) + b"\xc1\xc1\xc1")


def test_absurd_length_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="announces"):
        FrameDecoder(FromWorker).feed(HEADER.pack(MAX_FRAME + 1))


def test_unknown_message_tag_is_a_frame_error() -> None:
    import msgspec

    payload = msgspec.msgpack.encode({"type": "nonsense"})
    with pytest.raises(FrameError):
        FrameDecoder(FromWorker).feed(HEADER.pack(len(payload)) + payload)
