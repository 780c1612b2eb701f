"""`Codec`: the Higgs Audio V2 tokenizer behind a batch-friendly, padding-invariant interface."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from .batching import BatchPolicy, default_policy, padded_samples, plan_batches
from .conventions import CONVENTIONS, MODEL_CARD, SEMANTIC_PAD, ClipLayout, FrameRules, resampled_size
from .fast_ops import FastOps
from .staging import LengthRows, StagingBuffer
from .heap import release_freed_heap
from .masking import GroupNormStats, PaddingMasks, conv_output_lengths, time_mask
from .validation import CodecInputError, check_bandwidth, check_waveforms
from .waves import zero_padded
from .windowing import Piece, split_into_pieces


@dataclass(frozen=True)
class CodecIdentity:
    """What the pipeline records so that outputs can be traced to (and checked against) a codec."""

    spec: str
    revision: str | None  # the hub commit the weights came from; seed=N for random presets
    config_sha256: str
    weights_sha256: str | None  # the weight file's sha256 (several files: a hash of their names and hashes)
    format: str = "transformers"  # transformers | original (converted on load) | random
    converter: str | None = None  # the conversion's version, for the original format

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Codec:
    def __init__(
        self,
        model,
        identity: CodecIdentity,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        window_s: float = 120.0,
        context_s: float = 10.0,
        policy: BatchPolicy | None = None,
        acoustic_chunk_s: float = 20.0,
        convention: str = MODEL_CARD,
        allow_tf32: bool = False,
        shape_grid: bool | None = None,
    ):
        if convention not in CONVENTIONS:
            raise ValueError(f"convention {convention!r} is not one of {CONVENTIONS}")
        self.model = model.to(device).eval()
        self.convention = convention
        self.identity = identity
        self.device = device
        self.dtype = dtype
        self.allow_tf32 = allow_tf32  # for the encoders only, set around each of their passes (`_math`)
        # batch shapes on a grid (codec.batching) where kernels are planned per shape: off the host by default
        self.shape_grid = device.type != "cpu" if shape_grid is None else shape_grid
        config = model.config
        self.sample_rate: int = config.sample_rate
        self.hop_length: int = config.hop_length
        self.frame_rate: float = config.sample_rate / config.hop_length
        self.bandwidths: list[float] = list(config.target_bandwidths)
        self.policy = policy or default_policy(device.type)
        self.window_frames = max(1, round(window_s * self.frame_rate))
        self.acoustic_chunk_frames = max(1, round(acoustic_chunk_s * self.frame_rate))
        self.acoustic_context_frames = receptive_field_frames(model.acoustic_encoder, self.hop_length)
        self.context_frames = max(0, round(context_s * self.frame_rate))
        self._masks = PaddingMasks(model)
        self.frame_rules = FrameRules(model, self._masks.acoustic, self._masks.semantic)
        self._fast_ops = FastOps(model)
        self._staging = StagingBuffer(device)  # one host buffer for every batch's copy to the device
        self._length_staging = StagingBuffer(device, torch.int64)  # and one for the lengths its masks use
        self._resample = SpeechResampler(config.sample_rate, config.semantic_sample_rate, device)
        # frames the model computed, padding and window context included; against the frames of
        # codes returned, this is the padding efficiency the pipeline reports
        self.encoded_frames = 0
        self._hubert_first_conv = model.semantic_model.feature_extractor.conv_layers[0].conv

    # ---- facts about the checkpoint -------------------------------------------------------
    def num_codebooks(self, bandwidth: float) -> int:
        return codebooks_for_bandwidth(self.model.config, bandwidth)

    def layout(self, num_samples: int) -> ClipLayout:
        """What each encoder path reads of a clip of `num_samples` samples, and its frames, under this codec's
        convention (codec.conventions). ValueError for a clip too short to give a frame."""
        return self.frame_rules.layout(num_samples, self.convention)

    def num_frames(self, num_samples: int) -> int:
        return self.layout(num_samples).frames

    # ---- encode -----------------------------------------------------------------------------
    def encode(
        self,
        waveforms: list,
        bandwidth: float,
        max_batch_seconds: float | None = None,
        max_clips: int | None = None,
    ) -> list[np.ndarray]:
        """Codes [num_codebooks, ceil(len/hop)] (int16) for each 24 kHz mono float32 waveform: a numpy array, or
        a FileWave (codec.waves), which is read a window at a time and never held whole.

        Equal to encoding each clip alone, whatever the batch it lands in.
        """
        num_codebooks = self.num_codebooks(bandwidth)
        waveforms = check_waveforms(waveforms)

        def codes_of(batch):
            return (self._codes(self._embeddings(batch), bandwidth),)

        parts = self._run(waveforms, codes_of, self.policy_with(max_batch_seconds, max_clips))
        out = []
        for (codes,) in parts:
            codes = codes.to(torch.int16).cpu().numpy()
            assert codes.shape[0] == num_codebooks
            out.append(codes)
        return out

    def _codes(self, embeddings: tuple[torch.Tensor, torch.Tensor], bandwidth: float) -> torch.Tensor:
        """Codes [num_codebooks, B, frames] of (acoustic, semantic) embeddings: fusion and RVQ (projection,
        distances, argmin) in IEEE float32, whatever TF32 and autocast the encoders ran under."""
        with _math(self.device.type, tf32=False, dtype=None):
            fused = self.model.fc(torch.cat(embeddings, dim=1).float().transpose(1, 2)).transpose(1, 2)
            return self.model.quantizer.encode(fused, bandwidth).transpose(0, 1)

    def embeddings(
        self, waveforms: list[np.ndarray], max_batch_seconds: float | None = None, max_clips: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(acoustic, semantic) encoder outputs [channels, frames] per clip, before fusion and RVQ.

        Exposed so tests can check each path on its own: codes alone can hide a broken path.
        """
        waveforms = check_waveforms(waveforms)
        parts = self._run(waveforms, self._embeddings, self.policy_with(max_batch_seconds, max_clips))
        return [(a.float().cpu().numpy(), s.float().cpu().numpy()) for a, s in parts]

    def policy_with(self, max_batch_seconds: float | None, max_clips: int | None) -> BatchPolicy:
        """This codec's policy with whichever of the two limits are given replaced."""
        return BatchPolicy(
            max_batch_seconds if max_batch_seconds is not None else self.policy.max_batch_seconds,
            max_clips if max_clips is not None else self.policy.max_clips,
        )

    @torch.inference_mode()
    def _run(self, waveforms: list, forward, policy: BatchPolicy) -> list[tuple[torch.Tensor, ...]]:
        """Windows, buckets and runs `forward(batch)`; returns its per-frame outputs per clip.

        A clip is read one piece (a window and its context) at a time, so a FileWave is never held whole."""
        hop = self.hop_length
        layouts = []
        for index, wave in enumerate(waveforms):
            try:
                layouts.append(self.layout(wave.size))
            except ValueError as error:
                raise CodecInputError(index, str(error)) from None
        pieces: list[Piece] = []
        clip_stats = {}
        for index, (wave, layout) in enumerate(zip(waveforms, layouts)):
            clip_pieces = split_into_pieces(index, layout.frames, self.window_frames, self.context_frames)
            if len(clip_pieces) > 1:
                # windows normalise with the whole clip's statistics, as a single pass would
                clip_stats[index] = self._clip_group_norm_stats(wave, layout.semantic_samples)
            pieces += clip_pieces
        results: list[tuple[torch.Tensor, ...] | None] = [None] * len(pieces)
        grid_hop = hop if self.shape_grid else None
        for batch in plan_batches([p.num_frames * hop for p in pieces], self.sample_rate, policy, grid_hop):
            inputs = [_piece_input(waveforms[pieces[i].clip], layouts[pieces[i].clip], pieces[i], hop) for i in batch]
            semantic, semantic_lengths = self._stage([x[0] for x in inputs])
            if all(x[1] is None for x in inputs):
                acoustic, acoustic_lengths = semantic, semantic_lengths  # both paths read the same samples
            else:
                acoustic, acoustic_lengths = self._stage([x[0] if x[1] is None else x[1] for x in inputs])
            self.encoded_frames += len(batch) * acoustic.shape[-1] // hop
            staged = self._plan(semantic, semantic_lengths, acoustic, acoustic_lengths,
                                [clip_stats.get(pieces[i].clip) for i in batch],
                                max(pieces[i].num_frames for i in batch))
            # one device-to-host copy per batch, not one per clip
            outputs = [out.cpu() for out in forward(staged)]
            for row, index in enumerate(batch):
                piece = pieces[index]
                keep = slice(piece.keep_start - piece.start, piece.keep_stop - piece.start)
                results[index] = tuple(out[row, :, keep] for out in outputs)
            if staged.norm_stats is not None:
                release_freed_heap()  # windows of a long clip: one window's memory, not a growing heap
        per_clip: list[list[tuple]] = [[] for _ in waveforms]
        for piece, result in zip(pieces, results):
            per_clip[piece.clip].append(result)
        return [tuple(torch.cat(parts, dim=-1) for parts in zip(*chunks)) for chunks in per_clip]

    def _stage(self, clips: list[np.ndarray]) -> tuple[torch.Tensor, list[int] | None]:
        """Rows zero-padded to a whole number of hops, on the device, as [B, 1, T]; each row's valid samples,
        or None when every row fills the batch (nothing to mask)."""
        lengths = [clip.size for clip in clips]
        hop = self.hop_length
        total = padded_samples(max(lengths), hop) if self.shape_grid else -(-max(lengths) // hop) * hop
        audio = self._staging.to_device(clips, total)
        return audio, None if all(n == total for n in lengths) else lengths

    def _autocast(self):
        """The encoders' math: `dtype` autocast and TF32 as the codec was built with, for their passes only."""
        return _math(self.device.type, self.allow_tf32, None if self.dtype == torch.float32 else self.dtype)

    def _plan(self, semantic, semantic_lengths, acoustic, acoustic_lengths, clip_stats: list, frames: int) -> "_Batch":
        """A staged batch and every length its masks use, worked out on the host from the clips' lengths and
        copied to the device in one transfer (`LengthRows`)."""
        rows, config = LengthRows(), self.model.config
        given = None if all(stats is None for stats in clip_stats) else tuple(int(s is not None) for s in clip_stats)
        semantic_frames = speech = group_norm = hubert_frames = None
        if semantic_lengths is not None or given is not None:
            semantic_lengths = semantic_lengths or [semantic.shape[-1]] * semantic.shape[0]
            semantic_frames = [self.frame_rules.semantic_frames(n) for n in semantic_lengths]
            speech = tuple(resampled_size(n, config.sample_rate, config.semantic_sample_rate) for n in semantic_lengths)
            hubert = [n + 2 * SEMANTIC_PAD for n in speech]
            group_norm = conv_output_lengths(hubert, [self._hubert_first_conv])
            hubert_frames = tuple(int(self.model.semantic_model._get_feat_extract_output_lengths(n)) for n in hubert)
            rows.add(speech, group_norm, hubert_frames, *self._masks.rows_needed(semantic=semantic_frames))
        chunks = self._acoustic_chunks(acoustic.shape[-1], acoustic_lengths)
        for chunk in chunks:
            if chunk.valid is not None:
                rows.add(*self._masks.rows_needed(acoustic=chunk.valid))
        if given is not None:
            rows.add(given)
        rows.copy(self._length_staging)
        return _Batch(semantic, semantic_lengths, semantic_frames, acoustic, chunks,
                      self._batch_norm_stats(clip_stats, rows[given]) if given is not None else None, frames,
                      rows, speech, group_norm, hubert_frames)

    def _batch_norm_stats(self, per_row: list, given: torch.Tensor) -> GroupNormStats:
        groups = next(stats for stats in per_row if stats is not None)[0].shape[0]
        zero = torch.zeros(groups, device=self.device)
        return GroupNormStats(
            mean=torch.stack([zero if s is None else s[0] for s in per_row]),
            var=torch.stack([zero if s is None else s[1] for s in per_row]),
            given=given.bool(),
        )

    def _clip_group_norm_stats(self, wave, size: int, chunk: int = 1 << 15) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance per group of HuBERT's first conv output over a whole clip (`wave` zero-padded to
        `size` samples), `chunk` conv steps at a time: each chunk resamples only the audio it reads, so a long
        clip is never held whole, and its samples are those of resampling the whole clip."""
        config = self.model.config
        conv = self._hubert_first_conv
        groups = self.model.semantic_model.feature_extractor.conv_layers[0].layer_norm.num_groups
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        speech_size = resampled_size(size, config.sample_rate, config.semantic_sample_rate)
        steps = (speech_size + 2 * SEMANTIC_PAD - kernel) // stride + 1
        total = total_sq = 0.0
        for start in range(0, steps, chunk):
            stop = min(steps, start + chunk)
            # conv steps [start, stop) read the speech padded by SEMANTIC_PAD, [start * stride, (stop - 1) * stride + kernel)
            speech = resampled_range(wave, size, config.sample_rate, config.semantic_sample_rate,
                                     start * stride - SEMANTIC_PAD, (stop - 1) * stride + kernel - SEMANTIC_PAD,
                                     self.device, self._resample)
            out = conv(speech[None, None])[0].double()
            out = out.reshape(groups, -1, out.shape[-1])
            total = total + out.sum(dim=(1, 2))
            total_sq = total_sq + (out**2).sum(dim=(1, 2))
        count = steps * (conv.out_channels // groups)
        mean = total / count
        return mean.float(), (total_sq / count - mean**2).clamp_min(0).float()

    def _embeddings(self, batch: "_Batch"):
        """Acoustic and semantic embeddings [B, C, batch.frames] of a staged batch: each row's first frames
        are those of its clip alone; `norm_stats` overrides the first GroupNorm's statistics for rows that are
        windows of a longer clip."""
        model, config = self.model, self.model.config
        speech = self._resample(batch.semantic[:, 0, :])
        masks = contextlib.nullcontext()
        if batch.semantic_frames is not None:
            rows = batch.rows
            # the resampler's tail rings past each clip's end; alone, the clip would see zeros there
            speech = speech * time_mask(rows[batch.speech_lengths], speech.shape[-1], speech.dtype)
            # HuBERT's key mask and its zeroed frames come from the masks, not from an attention_mask
            masks = self._masks.active(rows, semantic=batch.semantic_frames,
                                       group_norm_lengths=rows[batch.group_norm_lengths],
                                       group_norm_stats=batch.norm_stats, hubert_frames=rows[batch.hubert_frames])
        speech = F.pad(speech, (SEMANTIC_PAD, SEMANTIC_PAD))
        with self._fast_ops.active(), self._autocast():
            with masks:
                hidden = model.semantic_model(speech, output_hidden_states=True)
                semantic = torch.stack(hidden.hidden_states, dim=1).mean(dim=1)[:, :: config.semantic_downsample_factor, :]
                semantic = model.encoder_semantic(semantic.transpose(1, 2))
            acoustic = self._acoustic(batch.acoustic, batch.acoustic_chunks, batch.rows)
        if min(acoustic.shape[-1], semantic.shape[-1]) < batch.frames:
            raise RuntimeError(
                f"acoustic ({acoustic.shape[-1]}) or semantic ({semantic.shape[-1]}) frames fall short of the "
                f"{batch.frames} frames the clips' layouts give; this checkpoint does not fit the frame rules")
        return acoustic[..., : batch.frames], semantic[..., : batch.frames]

    def _acoustic_chunks(self, total: int, lengths: list[int] | None) -> list["_Chunk"]:
        """DAC is purely convolutional, so a long batch runs in chunks of `acoustic_chunk_frames` with enough
        context on each side to cover its receptive field: each chunk's core frames are those of a single pass,
        and activation memory stays bounded."""
        hop = self.hop_length
        frames, chunk, context = total // hop, self.acoustic_chunk_frames, self.acoustic_context_frames
        if frames <= chunk + 2 * context:
            spans = [(0, frames, 0, frames)]
        else:
            spans = [(max(0, a - context), min(frames, a + chunk + context), a, min(frames, a + chunk))
                     for a in range(0, frames, chunk)]
        chunks = []
        for start, stop, keep_start, keep_stop in spans:
            size = (stop - start) * hop
            # a clip that ends inside this chunk must see zeros past its end, as it would alone
            valid = None if lengths is None else [min(max(n - start * hop, 0), size) for n in lengths]
            chunks.append(_Chunk(start, stop, keep_start, keep_stop,
                                 valid if valid is not None and any(n < size for n in valid) else None))
        return chunks

    def _acoustic(self, audio: torch.Tensor, chunks: list["_Chunk"], rows: LengthRows) -> torch.Tensor:
        """DAC encoder output for a padded batch, chunk by chunk (`_acoustic_chunks`)."""
        hop, outputs = self.hop_length, []
        for c in chunks:
            masks = self._masks.active(rows, acoustic=c.valid) if c.valid is not None else contextlib.nullcontext()
            with masks:
                out = self.model.acoustic_encoder(audio[..., c.start * hop : c.stop * hop])
            outputs.append(out[..., c.keep_start - c.start : c.keep_stop - c.start])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

    # ---- decode -----------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, codes_list: list[np.ndarray], lengths: list[int] | None = None,
               clip_samples: list[int] | None = None) -> list[np.ndarray]:
        """24 kHz float32 audio for each [num_codebooks, frames] code array, trimmed to `lengths[i]` samples
        when given (else frames x hop). Under the authors' convention a clip whose acoustic path was encoded
        with zeros before it decodes with them: they are cut off, so sample i of the result lines up with
        sample i of the clip. `clip_samples[i]`: the encoded clip's length, which decides that (default
        `lengths[i]`; give it when decoding the first frames of a longer clip). Where the codes end before
        `lengths[i]` (the authors' frame rule drops a clip's last partial hop in some lengths) the audio is
        zero-padded to it."""
        out = []
        for index, codes in enumerate(codes_list):
            codes = np.asarray(codes)
            if codes.ndim != 2 or codes.shape[0] > len(self.model.quantizer.quantizers):
                raise CodecInputError(index, f"expected codes [num_codebooks, frames], got shape {codes.shape}")
            tensor = torch.from_numpy(codes.astype(np.int64))[None].to(self.device)
            audio = self.model.decode(tensor, return_dict=False)[0, 0].float().cpu().numpy()
            length = codes.shape[1] * self.hop_length if lengths is None else lengths[index]
            encoded = clip_samples[index] if clip_samples is not None else (length if lengths is not None else None)
            shift = 0 if encoded is None else self._acoustic_shift(encoded)
            audio = audio[shift : shift + length]
            out.append(np.pad(audio, (0, length - audio.size)) if lengths is not None else audio)
        return out

    def _acoustic_shift(self, num_samples: int) -> int:
        try:
            return self.layout(num_samples).acoustic_shift
        except ValueError:  # too short to have been encoded: nothing to line up
            return 0


@dataclass(frozen=True)
class _Chunk:
    """Frames [start, stop) of a batch go through the acoustic encoder, [keep_start, keep_stop) are kept;
    `valid`: each row's valid samples in the chunk (None: no row ends inside it, nothing to mask)."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int
    valid: list[int] | None


@dataclass
class _Batch:
    """Clips staged for one forward pass: per path the padded audio [B, 1, T] on the device and the semantic
    path's valid samples per row; the semantic encoder's valid frames per row (None: unmasked); the acoustic
    encoder's chunks; `rows`: every length the masks use, on the device, and the keys of the semantic ones."""

    semantic: torch.Tensor
    semantic_lengths: list[int] | None
    semantic_frames: list[int] | None
    acoustic: torch.Tensor
    acoustic_chunks: list[_Chunk]
    norm_stats: GroupNormStats | None
    frames: int  # the most frames a row keeps
    rows: LengthRows
    speech_lengths: tuple[int, ...] | None  # valid 16 kHz samples
    group_norm_lengths: tuple[int, ...] | None  # valid steps at HuBERT's first GroupNorm
    hubert_frames: tuple[int, ...] | None  # valid frames at HuBERT's transformer encoder


@contextlib.contextmanager
def _math(device_type: str, tf32: bool, dtype: torch.dtype | None):
    """TF32 for CUDA matmuls and convolutions on or off, and autocast to `dtype` (None: off), for the block
    only. The flags are the process's, so they are set around each pass, not once at load: the quantizer must
    see them off whatever the encoders use (one codec encodes at a time, worker.ShardProcessor)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    cast = (torch.autocast(device_type=device_type, dtype=dtype) if dtype is not None
            else torch.autocast(device_type=device_type, enabled=False) if device_type in ("cuda", "cpu")
            else contextlib.nullcontext())
    try:
        with cast:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _piece_input(wave, layout: ClipLayout, piece: Piece, hop: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The samples of one piece for the semantic path and, where it reads others, for the acoustic path
    (None: the same). A clip's last piece reads to the end of what each path reads of the clip alone."""
    start, last = piece.start * hop, piece.stop == layout.frames
    semantic = zero_padded(wave, start, layout.semantic_samples if last else piece.stop * hop)
    if layout.acoustic_shift == 0 and layout.acoustic_samples == layout.semantic_samples:
        return semantic, None
    stop = layout.acoustic_samples if last else piece.stop * hop
    return semantic, zero_padded(wave, start - layout.acoustic_shift, stop - layout.acoustic_shift)


# torchaudio.functional.resample's defaults: a sinc filter cut at `rolloff` of the lower rate's Nyquist,
# reaching `lowpass_filter_width` zero crossings on each side
_RESAMPLE_ZERO_CROSSINGS, _RESAMPLE_ROLLOFF = 6, 0.99


def resampled_range(wave, size: int, orig_rate: int, new_rate: int, start: int, stop: int,
                    device: torch.device = torch.device("cpu"), resample=None) -> torch.Tensor:
    """Samples [start, stop) of torchaudio's resampling of `wave` zero-padded to `size` samples (zeros outside
    the resampled clip), computed from the input around that range only.

    torchaudio resamples with a strided convolution: output j * new + phase reads the input within `width`
    samples of j * orig (rates divided by their gcd). Reading `context` >= width real samples beyond the range
    on each side, in whole steps of `orig`, gives each kept output exactly the input the whole clip's
    resampling gives it, so the samples are the same up to float32 rounding: on some CPUs the convolution's
    summation order depends on the input's length (last-bit differences, tests/test_codec.py).
    resample: a `SpeechResampler` for these rates on `device` (default: torchaudio's, which builds its filter)."""
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    out = torch.zeros(stop - start, device=device)
    first, last = max(start, 0), min(stop, resampled_size(size, orig_rate, new_rate))
    if last <= first:
        return out
    width = math.ceil(_RESAMPLE_ZERO_CROSSINGS * orig / (min(orig, new) * _RESAMPLE_ROLLOFF))
    context = orig * math.ceil(width / orig)
    first_step, last_step = first // new, -(-last // new)
    begin = first_step * orig - context  # the input read, a whole number of steps; zeros outside the clip
    audio = torch.from_numpy(zero_padded(wave, begin, last_step * orig + context)).to(device)
    resampled = resample(audio) if resample else torchaudio.functional.resample(audio, orig_rate, new_rate)
    offset = begin // orig * new  # the output index of `resampled[0]`
    out[first - start : last - start] = resampled[first - offset : last - offset]
    return out


class SpeechResampler:
    """torchaudio's `functional.resample` from the codec's rate to HuBERT's, its filter built once on the device:
    torchaudio builds it per call, copying a scalar to the device each time. The same ops on the same device, so
    the same samples."""

    def __init__(self, orig_rate: int, new_rate: int, device: torch.device):
        from torchaudio.functional.functional import _apply_sinc_resample_kernel, _get_sinc_resample_kernel

        self.orig_rate, self.new_rate, self.gcd = orig_rate, new_rate, math.gcd(orig_rate, new_rate)
        self._apply = _apply_sinc_resample_kernel
        self.kernel, self.width = (None, 0) if orig_rate == new_rate else _get_sinc_resample_kernel(
            orig_rate, new_rate, self.gcd, lowpass_filter_width=_RESAMPLE_ZERO_CROSSINGS, rolloff=_RESAMPLE_ROLLOFF,
            device=device, dtype=torch.float32)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return wave
        return self._apply(wave, self.orig_rate, self.new_rate, self.gcd, self.kernel, self.width)


def receptive_field_frames(encoder, hop: int) -> int:
    """Frames of context on each side that cover every output's receptive field, so chunk seams cannot
    change what a kept frame sees: each conv reaches `padding` steps back and span - 1 - padding ahead."""
    reach, jump = 0, 1
    for conv in encoder.modules():
        if isinstance(conv, torch.nn.Conv1d):
            span = (conv.kernel_size[0] - 1) * conv.dilation[0]
            reach += max(conv.padding[0], span - conv.padding[0]) * jump
            jump *= conv.stride[0]
    return math.ceil(reach / hop) + 1


def codebooks_for_bandwidth(config, bandwidth: float) -> int:
    """RVQ stages used at `bandwidth` kbps (as transformers' quantizer picks them): 2 kbps -> 8 of 10 bits at 25 Hz."""
    check_bandwidth(bandwidth, list(config.target_bandwidths))
    bits_per_second = config.codebook_nbits * config.sample_rate / config.hop_length
    return max(1, int(bandwidth * 1000 // bits_per_second))


def reference_encode(model, waveform: np.ndarray, bandwidth: float) -> np.ndarray:
    """Canonical codes: the clip alone, zero-padded to a multiple of the hop, through `model.encode`."""
    hop = model.config.hop_length
    padded = np.pad(waveform, (0, math.ceil(waveform.size / hop) * hop - waveform.size))
    device = next(model.parameters()).device
    with torch.inference_mode():
        codes = model.encode(torch.from_numpy(padded)[None, None].to(device), bandwidth=bandwidth, return_dict=False)
    return codes[0].to(torch.int16).cpu().numpy()
