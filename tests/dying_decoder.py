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


class UnreadyDecoder(SampleDecoder):
    """Its processes die before they are ready: what unpickling it in a new process runs fails, as an import of a
    missing decoder library would."""

    def __reduce__(self):
        return os._exit, (3,)
