"""A decoder for tests/test_decode_processes.py whose process dies on given bytes: a module of its own, so that the
processes that unpickle it import little."""

import os

from pipeline.actor.sample_decoder import SampleDecoder


class DyingDecoder(SampleDecoder):
    """Its process exits (as one killed for memory, or crashed in a decoder) on the clip keyed "die"."""

    def in_memory(self, data: bytes, key: str):
        if key == "die":
            os._exit(1)
        return super().in_memory(data, key)
