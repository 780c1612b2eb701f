"""The actor side as the driver sees it (driver/protocol.py's `ActorSide`): the codec actor, where it would run,
and which of its methods decide the codes."""

from __future__ import annotations

import ray

from ..audio.decode import DECODE_METHOD
from ..audio.loudness import METHOD as LOUDNESS_METHOD
from ..config import Config
from .device import facts_here
from .ray_actor import CodecActor


class CodecActorSide:
    actor_class = CodecActor

    def probe_device(self, config: Config, options: dict) -> dict:
        return ray.get(facts_here.options(**options).remote(config.codec.device))

    def identity(self, config: Config) -> dict:
        loud = config.audio.loudness_lufs
        # None when off, which is also what an output written before the option reads as: it goes on unchanged
        return {"decode": DECODE_METHOD,
                "audio": {"loudness_lufs": loud, "loudness_method": LOUDNESS_METHOD if loud is not None else None}}
