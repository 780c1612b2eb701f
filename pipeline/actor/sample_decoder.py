"""One raw sample -> validated audio at the codec's rate, or what stands for it: its error record, or a transient
shard error when another attempt could decode it."""

from __future__ import annotations

from dataclasses import dataclass

from ..audio.decode import Audio, SampleError, SpilledFile, decode_audio
from ..config import AudioConfig
from ..sources import RawSample, ShardError, transient_error


@dataclass(frozen=True)
class SampleDecoder:
    """Picklable, so a decode task in another process (pipeline/actor/decode_tasks.py) decodes exactly as the actor's
    own threads do."""

    audio: AudioConfig
    sample_rate: int
    ceil_length: bool  # codec.convention=authors: resampled to librosa's length

    def __call__(self, raw: RawSample) -> Audio | SampleError | ShardError:
        """A transient ShardError (a full TMPDIR, no memory left): the shard breaks off there and is retried whole
        (prefetch.DecodeAhead)."""
        try:
            if raw.error is not None:
                return raw.error if isinstance(raw.error, SampleError) else SampleError("bad_sample", str(raw.error))
            a = self.audio
            return decode_audio(raw.audio, self.sample_rate, a.resampler_quality, a.max_seconds,
                                loudness_lufs=a.loudness_lufs, ceil_length=self.ceil_length)
        except SampleError as error:
            return error
        except Exception as error:  # a decoder bug must cost one sample, not the shard
            return transient_error(error, f"decoding {raw.key}") or SampleError("decode_failed", repr(error)[:200])
        finally:
            if isinstance(raw.audio, SpilledFile):
                raw.audio.close()  # its disk space goes once decoded, not when the pool holding `raw` is encoded
