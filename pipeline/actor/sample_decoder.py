"""One raw sample -> validated audio at the codec's rate, or what stands for it: its error record, or a transient
shard error when another attempt could decode it."""

from __future__ import annotations

from dataclasses import dataclass

from ..audio.decode import Audio, NeedsFileWave, SampleError, SpilledFile, decode_audio
from ..config import AudioConfig
from ..sources import RawSample, ShardError, transient_error


@dataclass(frozen=True)
class SampleDecoder:
    """Picklable, so a decode task or a decode process (pipeline/actor/decode_tasks.py, decode_processes.py)
    decodes exactly as the actor's own threads do."""

    audio: AudioConfig
    sample_rate: int
    ceil_length: bool  # codec.convention=authors: resampled to librosa's length

    def __call__(self, raw: RawSample) -> Audio | SampleError | ShardError:
        """A transient ShardError (a full TMPDIR, no memory left): the shard breaks off there and is retried whole
        (prefetch.DecodeAhead)."""
        try:
            if raw.error is not None:
                return raw.error if isinstance(raw.error, SampleError) else SampleError("bad_sample", str(raw.error))
            return self._decoded(raw.audio, raw.key)
        finally:
            if isinstance(raw.audio, SpilledFile):
                raw.audio.close()  # its disk space goes once decoded, not when the pool holding `raw` is encoded

    def in_memory(self, data: bytes, key: str) -> Audio | SampleError | ShardError | None:
        """A file's bytes decoded as `__call__` decodes them, its wave an array; None where the clip is longer than
        what decodes in memory (it would go to a FileWave, a temporary file of this process): the caller decodes it."""
        try:
            return self._decoded(data, key, file_waves=False)
        except NeedsFileWave:
            return None

    def _decoded(self, source, key: str, file_waves: bool = True) -> Audio | SampleError | ShardError:
        a = self.audio
        try:
            return decode_audio(source, self.sample_rate, a.resampler_quality, a.max_seconds,
                                loudness_lufs=a.loudness_lufs, ceil_length=self.ceil_length, file_waves=file_waves)
        except NeedsFileWave:
            raise
        except SampleError as error:
            return error
        except Exception as error:  # a decoder bug must cost one sample, not the shard
            return transient_error(error, f"decoding {key}") or SampleError("decode_failed", repr(error)[:200])
