"""What the codec did to the audio: original vs reconstruction, per category and per bandwidth.

Metrics (pure numpy/librosa, 24 kHz):

- `si_snr_db(ref, est)`: scale-invariant signal-to-noise ratio, dB. Higher is better; a gain alone
  does not change it (identical or scaled audio gives +inf); for `ref + noise` it is the SNR of the
  noise, up to the part of the noise that correlates with `ref`.
- `mel_distance_db(ref, est, sr)`: mean absolute difference of the two log-mel power spectrograms,
  dB. 0 for identical audio; a gain g gives |20 log10 g| (power scales by g^2) wherever both stay
  above the floor (MEL_RANGE_DB below the reference's loudest bin, applied to both, so the
  silences of a quiet recording do not dominate).

The audit (`audit`) takes N rows per category (the `category` column or the `metadata` JSON's; per
source when no row has one), re-reads their original audio from the source the manifest records with
the pipeline's own readers and decoder (so the original is decoded and resampled to 24 kHz exactly
as the run did), decodes their codes with the manifest's codec, first with all stored codebooks and
then with each smaller bandwidth's first K codebooks, and scores each reconstruction.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from ..tokenizer import Tokenizer, tokenizer_class, tokenizer_from_identity

MEL_FFT = 1024  # 43 ms at 24 kHz
MEL_HOP = 240  # 10 ms
MEL_BANDS = 80
MEL_RANGE_DB = 80.0  # bins further below the reference's peak are floored (librosa's top_db default)
AUDIT_MAX_SECONDS = 30.0  # longer clips are scored on their first 30 s (codes and audio cut alike)


class SourceUnavailable(RuntimeError):
    """The original audio of an audited row cannot be read back as the run read it: the shard moved,
    was deleted or is unreadable, or it no longer holds the sample (the source changed)."""


def _pair(ref, est) -> tuple[np.ndarray, np.ndarray]:
    ref, est = np.asarray(ref, np.float64).ravel(), np.asarray(est, np.float64).ravel()
    n = min(ref.size, est.size)
    if n == 0:
        raise ValueError("empty audio")
    return ref[:n], est[:n]


def si_snr_db(ref, est) -> float:
    """Scale-invariant SNR of `est` against `ref`, in dB (both trimmed to the shorter, means removed).
    +inf when `est` is `ref` up to a positive or negative gain; nan when `ref` is silent."""
    ref, est = _pair(ref, est)
    ref, est = ref - ref.mean(), est - est.mean()
    ref_energy = float(np.dot(ref, ref))
    if ref_energy == 0.0:
        return float("nan")
    target = (np.dot(est, ref) / ref_energy) * ref
    noise = est - target
    noise_energy, target_energy = float(np.dot(noise, noise)), float(np.dot(target, target))
    # rounding leaves ~1e-16 of the target's energy in `noise` when est is a scaled ref
    if noise_energy <= 1e-20 * max(target_energy, 1e-300):
        return float("inf")
    if target_energy == 0.0:
        return float("-inf")
    return 10.0 * math.log10(target_energy / noise_energy)


def log_mel_db(audio, sr: int) -> np.ndarray:
    """[MEL_BANDS, frames] mel power spectrogram in dB (10 log10 of power; no floor)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=np.asarray(audio, np.float32), sr=sr, n_fft=MEL_FFT, hop_length=MEL_HOP,
                                         n_mels=MEL_BANDS, power=2.0)
    return 10.0 * np.log10(np.maximum(mel.astype(np.float64), 1e-30))


def mel_distance_db(ref, est, sr: int) -> float:
    """Mean |log-mel(ref) - log-mel(est)| in dB, both floored at MEL_RANGE_DB below ref's peak."""
    ref, est = _pair(ref, est)
    a, b = log_mel_db(ref, sr), log_mel_db(est, sr)
    floor = a.max() - MEL_RANGE_DB
    return float(np.mean(np.abs(np.maximum(a, floor) - np.maximum(b, floor))))


# ---- choosing rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowRef:
    """Where one output row lives, and what the audit needs to find its original."""

    output_dir: str
    file: str
    group: int
    index: int  # within the row group
    key: str
    source: str  # the input shard's URL
    duration_s: float


class Reservoir:
    """Up to `n` rows per group, uniformly at random over all rows seen (reservoir sampling, seeded)."""

    def __init__(self, n: int, seed: int = 0):
        self.n, self.rng = n, random.Random(seed)
        self.kept: dict[str, list[RowRef]] = {}
        self.seen: dict[str, int] = {}

    def offer(self, group: str, row: RowRef) -> None:
        seen = self.seen[group] = self.seen.get(group, 0) + 1
        kept = self.kept.setdefault(group, [])
        if len(kept) < self.n:
            kept.append(row)
        else:
            slot = self.rng.randrange(seen)
            if slot < self.n:
                kept[slot] = row


# ---- the audit -----------------------------------------------------------------------------------


@dataclass
class RowScore:
    row: RowRef
    group: str
    seconds: float  # scored
    scores: dict  # codebooks -> {"si_snr_db": float, "mel_distance_db": float}


@dataclass
class Example:
    """A scored row kept with its audio, for the report's players and spectrograms."""

    score: RowScore
    original: np.ndarray
    reconstruction: np.ndarray  # with all stored codebooks


@dataclass
class FidelityResult:
    grouped_by: str  # "category" | "source"
    per_row: int  # rows asked for per group
    codebook_levels: list  # codebook counts scored, ascending; the last is all stored codebooks
    bandwidths: dict  # codebooks -> kbps
    sample_rate: int
    codec: dict  # the manifest's codec identity
    max_seconds: float
    rows: list = field(default_factory=list)  # RowScore
    examples: list = field(default_factory=list)  # Example

    def per_group(self) -> dict:
        """group -> {"rows": n, "seconds": s, codebooks -> {metric: mean}}."""
        out: dict[str, dict] = {}
        for score in self.rows:
            entry = out.setdefault(score.group, {"rows": 0, "seconds": 0.0, "levels": {}})
            entry["rows"] += 1
            entry["seconds"] += score.seconds
            for k, metrics in score.scores.items():
                for name, value in metrics.items():
                    entry["levels"].setdefault(k, {}).setdefault(name, []).append(value)
        for entry in out.values():
            entry["levels"] = {k: {name: float(np.mean(v)) for name, v in m.items()}
                               for k, m in sorted(entry["levels"].items())}
        return dict(sorted(out.items()))


def codec_from_manifest(manifest: dict, device: str = "auto") -> Tokenizer:
    """The tokenizer the manifest records (spec, commit or random seed), so decoding matches the codes."""
    return tokenizer_from_identity(manifest["codec"], manifest_convention(manifest), device)


def manifest_convention(manifest: dict) -> str:
    """The output's codec.convention; an output written before the option has the model card's."""
    return manifest.get("identity", {}).get("convention", "model_card")


def manifest_tokenizer(manifest: dict) -> type[Tokenizer]:
    """The tokenizer kind the manifest's codec spec names (the default kind where it records none)."""
    return tokenizer_class(str(manifest.get("codec", {}).get("spec", "")))


def codebook_levels(codec, stored: int, stored_kbps: float) -> dict[int, float]:
    """codebooks -> kbps: each bandwidth of the codec whose codebooks the stored codes hold, and the stored one."""
    levels = {stored: float(stored_kbps)}
    for bandwidth in sorted(codec.bandwidths):
        k = codec.num_codebooks(bandwidth)
        if k < stored:
            levels.setdefault(k, float(bandwidth))
    return dict(sorted(levels.items()))


@dataclass
class Original:
    audio: np.ndarray  # the first seconds of the audio the codec was given
    clip_samples: int  # the whole clip's length at the codec's rate (its layout decides how its codes decode)


def read_originals(manifest: dict, shard_ids: dict, wanted: list[RowRef], sample_rate: int,
                   max_seconds: float = AUDIT_MAX_SECONDS) -> dict[str, Original]:
    """key -> the first `max_seconds` of each wanted row's original audio, read and decoded as the run did
    (the manifest's source settings, decoder, resampler and convention; mono at `sample_rate`).
    shard_ids: source URL -> shard id (from the commit records: HF keys without a key column name it).
    Raises SourceUnavailable when a shard cannot be read or no longer holds a row as the run read it."""
    from ..audio.decode import SpilledFile
    from ..sources import ShardError, read_shard, recorded_shards, source_from_record
    from ..storage import Storage

    source = source_from_record(manifest["config"]["source"])
    by_source: dict[tuple[str, str], dict[str, RowRef]] = {}
    for row in wanted:  # by data file: shards of a files or manifest source share their source URL
        by_source.setdefault((row.source, row.file), {})[row.key] = row
    recorded = recorded_shards(Storage(wanted[0].output_dir)) if wanted else {}  # files, nemo, CutSet manifests
    originals: dict[str, np.ndarray] = {}
    for (url, file), rows in by_source.items():
        missing = dict(rows)
        shard_id = file.rsplit("/", 1)[-1].removesuffix(".parquet")  # data/SHARD_ID.parquet
        shard = source.shard_again(shard_id if shard_id in recorded else shard_ids.get(url, ""), url, recorded)
        if shard is None:
            raise SourceUnavailable(f"cannot find source shard {url} (it holds {len(rows)} audited row(s)) again")
        samples = read_shard(shard, source)
        try:
            for raw in samples:
                if raw.key in missing:
                    row = missing.pop(raw.key)
                    originals[row.key] = _decode_original(raw, row, url, manifest, sample_rate, max_seconds)
                    if not missing:
                        break
                elif isinstance(raw.audio, SpilledFile):
                    raw.audio.close()
        except ShardError as error:
            raise SourceUnavailable(f"cannot read source shard {url} (it holds {len(rows)} audited row(s)): "
                                    f"{error}") from None
        finally:
            samples.close()
        if missing:
            raise SourceUnavailable(f"source shard {url} no longer holds sample(s) {sorted(missing)[:5]}: "
                                    "the source changed since the run")
    return originals


def _decode_original(raw, row: RowRef, url: str, manifest: dict, sample_rate: int, max_seconds: float) -> Original:
    from ..audio.decode import SampleError, SpilledFile, decode_audio

    if raw.error is not None:
        raise SourceUnavailable(f"sample {row.key} of {url} cannot be read any more ({raw.error}): the source changed")
    settings = manifest["config"]["audio"]
    try:
        # the audio the codec was given: loudness-normalised too when the run was (an older manifest: off)
        decoded = decode_audio(raw.audio, sample_rate, settings["resampler_quality"], settings["max_seconds"],
                               loudness_lufs=settings.get("loudness_lufs"),
                               ceil_length=manifest_tokenizer(manifest).resamples_to_ceil(manifest_convention(manifest)))
    except SampleError as error:
        raise SourceUnavailable(f"sample {row.key} of {url} no longer decodes ({error}): the source changed") from None
    finally:
        if isinstance(raw.audio, SpilledFile):
            raw.audio.close()
    wave = decoded.wave  # a FileWave (a temporary file) for clips decoded in blocks
    try:
        array = np.array(wave[0 : min(wave.size, int(round(max_seconds * sample_rate)))], dtype=np.float32)
        clip_samples = wave.size
    finally:
        if hasattr(wave, "close"):
            wave.close()
    if abs(decoded.duration_s - row.duration_s) > 1e-3 * max(1.0, row.duration_s):
        raise SourceUnavailable(f"sample {row.key} of {url} lasts {decoded.duration_s:.3f} s, the run encoded "
                                f"{row.duration_s:.3f} s: the source changed since the run")
    return Original(array, clip_samples)


def _codes_of(rows: list[RowRef]) -> dict[str, np.ndarray]:
    from .dataset import read_unit, row_codes

    codes: dict[str, np.ndarray] = {}
    by_unit: dict[tuple, list[RowRef]] = {}
    for row in rows:
        by_unit.setdefault((row.output_dir, row.file, row.group), []).append(row)
    for (output_dir, name, group), unit_rows in by_unit.items():
        table = read_unit(output_dir, name, group)
        for row in unit_rows:
            (codes[row.key],) = row_codes(table.slice(row.index, 1))
    return codes


def audit(manifest: dict, shard_ids: dict, chosen: dict[str, list[RowRef]], grouped_by: str, per_row: int,
          examples_per_group: int = 1, max_examples: int = 6, codec=None,
          max_seconds: float = AUDIT_MAX_SECONDS) -> FidelityResult:
    """Score the chosen rows (group -> rows). codec: the manifest's (loaded here when None)."""
    codec = codec if codec is not None else codec_from_manifest(manifest)
    rate = codec.sample_rate
    stored = int(manifest["num_codebooks"])
    levels = codebook_levels(codec, stored, manifest["bandwidth"])
    wanted = [row for rows in chosen.values() for row in rows]
    originals = read_originals(manifest, shard_ids, wanted, rate, max_seconds)
    codes = _codes_of(wanted)
    result = FidelityResult(grouped_by, per_row, list(levels), levels, rate, manifest["codec"], max_seconds)
    shown: dict[str, int] = {}
    for group, rows in sorted(chosen.items()):
        for row in rows:
            original, clip_samples = originals[row.key].audio, originals[row.key].clip_samples
            # the frames that reach into the audited seconds (past any zeros the clip was encoded after)
            row_codes_ = codes[row.key][:, : codec.frames_reaching(original.size, clip_samples)]
            scores, full = {}, None
            for k in levels:
                (reconstruction,) = codec.decode([row_codes_[:k]], lengths=[original.size],
                                                 clip_samples=[clip_samples])
                scores[k] = {"si_snr_db": si_snr_db(original, reconstruction),
                             "mel_distance_db": mel_distance_db(original, reconstruction, rate)}
                full = reconstruction
            score = RowScore(row, group, original.size / rate, scores)
            result.rows.append(score)
            if shown.get(group, 0) < examples_per_group and len(result.examples) < max_examples:
                shown[group] = shown.get(group, 0) + 1
                result.examples.append(Example(score, original, full))
    return result
