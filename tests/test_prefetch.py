"""DecodeAhead: a shard's samples decoded in threads ahead of the encoder, bounded by audio seconds."""

import threading
import time

from pipeline.audio.decode import Audio, decode_bytes, to_model_audio
from pipeline.actor.prefetch import IN_FLIGHT_PER_THREAD, DecodeAhead
from pipeline.sources import Shard, ShardError
from pipeline.sources.webdataset import read_tar_shard
from tests.corpus import mixed_tar


def decode(raw):
    return to_model_audio(*decode_bytes(raw.audio), 24000, "HQ", 3600)


def test_decodes_in_order_ahead_of_a_slow_consumer_within_the_budget(tmp_path):
    samples = mixed_tar(str(tmp_path / "a.tar"), "a", 24, seed=3, max_seconds=2.0)
    shard = Shard("a", str(tmp_path / "a.tar"), "webdataset")
    threads, budget = 2, 4.0
    ahead = DecodeAhead(lambda: read_tar_shard(shard), decode, threads, ahead_seconds=budget)
    keys, waiting = [], []
    for raw, audio in ahead:
        assert isinstance(audio, Audio)
        keys.append(raw.key)
        time.sleep(0.05)  # the encoder, busy: decoding runs on meanwhile
        waiting.append(ahead._ahead)
    assert keys == [s.key for s in samples]
    assert max(waiting) > 1.0  # it did decode ahead ...
    # ... and never more than the budget plus the clips the threads had in hand
    assert ahead.most_ahead_seconds <= budget + IN_FLIGHT_PER_THREAD * threads * 2.0


def test_wait_seconds_counts_the_consumer_blocked_on_slow_decoding(tmp_path):
    mixed_tar(str(tmp_path / "w.tar"), "w", 12, seed=4, max_seconds=0.5)
    shard = Shard("w", str(tmp_path / "w.tar"), "webdataset")

    def slow_decode(raw):
        time.sleep(0.1)
        return decode(raw)

    blocked = DecodeAhead(lambda: read_tar_shard(shard), slow_decode, 1, ahead_seconds=60.0)
    assert len(list(blocked)) == 12
    assert blocked.wait_seconds >= 0.8 * 12 * 0.1  # one thread, 0.1 s a clip, a consumer that never waits itself
    fast = DecodeAhead(lambda: read_tar_shard(shard), decode, 1, ahead_seconds=60.0)
    for _ in fast:
        time.sleep(0.1)  # a slow consumer: decoding is always ready
    assert fast.wait_seconds < 0.25 * blocked.wait_seconds


def test_a_broken_shard_ends_with_its_error_and_early_exit_leaves_no_threads(tmp_path):
    mixed_tar(str(tmp_path / "b.tar"), "b", 12, seed=4)
    data = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    cut = Shard("cut", str(tmp_path / "cut.tar"), "webdataset")
    items = list(DecodeAhead(lambda: read_tar_shard(cut), decode, 2, ahead_seconds=2.0))
    assert items[-1][0] is None and isinstance(items[-1][1], ShardError)
    assert all(raw is not None for raw, _ in items[:-1])

    before = threading.active_count()
    whole = Shard("b", str(tmp_path / "b.tar"), "webdataset")
    iterator = iter(DecodeAhead(lambda: read_tar_shard(whole), decode, 2, ahead_seconds=1.0))
    next(iterator)
    iterator.close()  # the consumer stops early (a failed shard, a killed task)
    deadline = time.time() + 5
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
