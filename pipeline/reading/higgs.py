"""Training batches for transformers' `HiggsAudioV2ForConditionalGeneration`, built from an output's stored codes.

    collator = HiggsAudioV2Collator(tokenizer, template="{text}{audio}", text_column="text")
    batch = collator(rows)          # rows: items TokenDataset yields (one clip each), or lists of them (one text)

`batch` is what `HiggsAudioV2Processor(text=texts, audio=clips, output_labels=True, return_tensors="pt",
padding=True)` returns for the same clips' raw audio, with the same tokenizer weights (the processor's
`model_card` padding: `tests/test_higgs_collator.py` checks every tensor): the tokenizer's outputs
(`input_ids`, `attention_mask`, left-padded), `audio_input_ids` [B, frames, codebooks] (each clip as stream
BOS 1024, its codes, stream EOS 1025, the delay pattern applied; a text's clips one after another, padded on
the right with 1025), `audio_input_ids_mask`, `labels` and `audio_labels` (-100 where no loss is taken). No
audio is encoded.

Prompts: `template` is a format string; `{text}` is the row's `text_column`, `{audio}` its clip, written as the
checkpoint's chat template writes an assistant's audio (`<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>`). The
default `"{text}{audio}"` is plain text for checkpoints without a chat template; `chat_prompt` renders one
(system prompt, the transcript as the user turn, the audio as the assistant turn) into such a template. A list
of rows is one text: their prompts, one after another. A row without text is skipped and counted
(`collator.skipped`), never given an empty prompt.

Crops (`TokenDataset(crop_frames=...)`): the stream BOS frame is put only before a clip's first frame and the
EOS frame only after its last, so a window from the middle of a clip has neither (the delay pattern's ramp
still holds 1024 / 1025 ids, which carry no loss). The text keeps `<|audio_out_bos|>` / `<|audio_eos|>`.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass

import numpy as np
import torch

from ..runstate.summary import read_manifest
from ..storage import Storage
from .batching import Batcher

__all__ = ["HiggsAudioV2Collator", "HiggsBatcher", "OutputRefused", "chat_prompt"]

log = logging.getLogger(__name__)

# the processor's defaults (HiggsAudioV2Processor.__init__), used where the tokenizer names none of its own
TOKEN_DEFAULTS = {"audio_token": "<|AUDIO_OUT|>", "audio_bos_token": "<|audio_out_bos|>",
                  "audio_eos_token": "<|audio_eos|>", "audio_delay_token": "<|reserved_special_token_6|>"}
NUM_CODEBOOKS = 8  # HiggsAudioV2Config.num_codebooks: the released tokenizer at its top bandwidth (2 kbps)
CODEBOOK_SIZE = 1024  # codes; the processor's stream BOS / EOS ids follow them (1024, 1025)
PROCESSOR_TEXT_DEFAULTS = {"padding": True, "padding_side": "left"}  # HiggsAudioV2Processor.text_kwargs


class OutputRefused(ValueError):
    """An output whose codes cannot give the processor's tensors."""


@dataclass(frozen=True)
class AudioTokens:
    """The text tokens of audio, looked up as the processor looks them up."""

    audio: str
    bos: str
    eos: str
    delay: str
    audio_id: int
    bos_id: int
    delay_id: int

    @classmethod
    def of(cls, tokenizer) -> "AudioTokens":
        names = {k: getattr(tokenizer, k, default) for k, default in TOKEN_DEFAULTS.items()}
        ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in names.items()}
        unknown = getattr(tokenizer, "unk_token_id", None)
        missing = [n for k, n in names.items() if ids[k] is None or (unknown is not None and ids[k] == unknown)]
        if missing:
            raise ValueError(f"the tokenizer has no tokens {missing}: give the checkpoint's tokenizer (the "
                             "processor looks these up)")
        return cls(names["audio_token"], names["audio_bos_token"], names["audio_eos_token"],
                   names["audio_delay_token"], ids["audio_token"], ids["audio_bos_token"], ids["audio_delay_token"])

    def span(self) -> str:
        """An assistant's audio as the checkpoint's chat template writes it."""
        return f"{self.bos}{self.audio}{self.eos}"


def _text_kwargs(tokenizer) -> dict:
    """The tokenizer call the processor makes with padding=True (ProcessorMixin._merge_kwargs): its defaults,
    then the text arguments the tokenizer was created with, then the caller's."""
    from transformers.processing_utils import TextKwargs

    kwargs = dict(PROCESSOR_TEXT_DEFAULTS)
    init = getattr(tokenizer, "init_kwargs", {}) or {}
    for key in TextKwargs.__annotations__:
        if key in init:
            kwargs[key] = getattr(tokenizer, key, init[key])
    return kwargs | {"padding": True, "return_tensors": "pt"}


def _check_template(template: str, tokens: AudioTokens) -> None:
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    if sorted(set(fields) - {"text", "audio"}) or fields.count("audio") != 1:
        raise ValueError(f"template {template!r} must hold {{audio}} once and no fields but {{text}}: "
                         f"it holds {fields}")
    for token in (tokens.audio, tokens.delay):
        if token in template:
            raise ValueError(f"template {template!r} holds {token!r}: write {{audio}} where the clip goes")


def chat_prompt(tokenizer, system: str, chat_template: str | None = None) -> str:
    """A template for `HiggsAudioV2Collator` from a chat template (the checkpoint's, else `chat_template`):
    the conversation [system prompt, user: the transcript, assistant: the audio] rendered, with `{text}` and
    `{audio}` where the transcript and the clip go. A leading BOS the tokenizer adds itself is dropped, as
    `apply_chat_template` does when it tokenizes. Note the chat template trims the transcript; the collator
    puts the row's text in as it is."""
    marker = "\x00TEXT\x00"
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": [{"type": "text", "text": marker}]},
                {"role": "assistant", "content": [{"type": "audio"}]}]
    rendered = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False)
    span = AudioTokens.of(tokenizer).span()
    if rendered.count(marker) != 1 or rendered.count(span) != 1:
        raise ValueError(f"the chat template renders the transcript {rendered.count(marker)} times and the assistant's "
                         f"audio as {span!r} {rendered.count(span)} times (once each expected)")
    bos = getattr(tokenizer, "bos_token", None)
    if bos and rendered.startswith(bos) and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id]:
        rendered = rendered[len(bos):]
    escaped = rendered.replace("{", "{{").replace("}", "}}")
    return escaped.replace(marker, "{text}").replace(span, "{audio}")


class HiggsAudioV2Collator:
    """Rows of an output (codes + text) -> the processor's training batch (see the module docstring).

    num_codebooks / codebook_size: what the model takes (HiggsAudioV2Config's; the model's audio embedding
    holds num_codebooks x (codebook_size + 2) rows with the stream BOS / EOS). An output with another codebook
    count (a lower `codec.bandwidth`), another codebook size, or `codec.convention=authors` (frames the
    processor's padding does not give) is refused with OutputRefused.
    """

    def __init__(self, tokenizer, template: str = "{text}{audio}", text_column: str = "text", *,
                 num_codebooks: int = NUM_CODEBOOKS, codebook_size: int = CODEBOOK_SIZE):
        self.tokenizer, self.template, self.text_column = tokenizer, template, text_column
        self.num_codebooks, self.codebook_size = num_codebooks, codebook_size
        self.stream_bos, self.stream_eos = codebook_size, codebook_size + 1  # the processor's 1024, 1025
        self.tokens = AudioTokens.of(tokenizer)
        _check_template(template, self.tokens)
        self.text_kwargs = _text_kwargs(tokenizer)
        self.skipped = 0  # rows without text, in this process (each DataLoader worker counts its own)
        self._checked: dict[str, None] = {}  # output folders whose manifests were checked

    # ---- checks -----------------------------------------------------------------------------------
    def check_output(self, output_dir: str) -> None:
        """Refuse an output whose manifest says its codes cannot give the processor's tensors."""
        if output_dir in self._checked:
            return
        manifest = read_manifest(Storage(output_dir)) or {}
        convention = (manifest.get("identity") or {}).get("convention", "model_card")
        if convention != "model_card":
            raise OutputRefused(f"{output_dir} was written with codec.convention={convention}: its clips' frame "
                                "counts are not the processor's (it pads each clip to whole hops, as the model card "
                                "does); tokenize again with codec.convention=model_card")
        books, size = manifest.get("num_codebooks"), manifest.get("codebook_size")
        if books is not None and int(books) != self.num_codebooks:
            raise OutputRefused(f"{output_dir} holds {books} codebooks per frame (codec.bandwidth="
                                f"{manifest.get('bandwidth')}); the model takes {self.num_codebooks}: tokenize again "
                                "at the bandwidth that gives them (2.0 kbps for the released tokenizer)")
        if size is not None and int(size) != self.codebook_size:
            raise OutputRefused(f"{output_dir} has codebooks of {size} codes; the model takes {self.codebook_size}")
        self._checked[output_dir] = None

    def _codes(self, row: dict) -> torch.Tensor:
        codes = torch.as_tensor(np.asarray(row["codes"]) if not torch.is_tensor(row["codes"]) else row["codes"])
        where = f"row {row.get('key')!r} of shard {row.get('source')!r}"
        if codes.ndim != 2 or codes.shape[0] != self.num_codebooks:
            raise OutputRefused(f"{where}: codes of shape {tuple(codes.shape)}; the model takes "
                                f"{self.num_codebooks} codebooks (tokenize at the bandwidth that gives them)")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            bad = int(codes.min()) if int(codes.min()) < 0 else int(codes.max())
            raise ValueError(f"{where}: code {bad} outside [0, {self.codebook_size})")
        return codes.to(torch.long)

    def _text(self, row: dict) -> str | None:
        text = row.get(self.text_column)
        if not text:
            return None
        for token in (self.tokens.audio, self.tokens.delay, self.tokens.bos, self.tokens.eos):
            if token in text:
                raise ValueError(f"row {row.get('key')!r} of shard {row.get('source')!r}: its {self.text_column!r} "
                                 f"holds the audio token {token!r}; the collator puts the audio tokens in")
        return text

    def has_text(self, row: dict) -> bool:
        """False (and counted in `skipped`) for a row without text."""
        if self._text(row) is None:
            self.skipped += 1
            log.warning("row %r of shard %r has no %r: skipped (%d so far)", row.get("key"), row.get("source"),
                        self.text_column, self.skipped)
            return False
        return True

    # ---- building -----------------------------------------------------------------------------------
    def _stream(self, row: dict, codes: torch.Tensor) -> torch.Tensor:
        """One clip as the processor lays it out: [frames + BOS + EOS + K - 1, K], codebook k delayed by k."""
        books, frames = codes.shape
        start = int(row.get("crop_start") or 0)
        bos = start == 0  # a crop keeps the stream BOS only at the clip's start, EOS only at its end
        eos = start + frames >= int(row.get("num_frames") or frames)
        length = frames + bos + eos + books - 1
        offset = torch.arange(length)[:, None] - torch.arange(books)[None, :] - int(bos)  # the code each slot holds
        inside = (offset >= 0) & (offset < frames)
        values = codes.T.gather(0, offset.clamp(0, max(frames - 1, 0))) if frames else offset
        return torch.where(inside, values, torch.where(offset < 0, self.stream_bos, self.stream_eos))

    def _expansion(self, length: int) -> str:
        books = self.num_codebooks
        return self.tokens.audio * (length - (books - 1)) + self.tokens.delay * (books - 1)

    def sequence_length(self, row: dict) -> int:
        """Text + audio positions the row takes in `input_ids` (special tokens the tokenizer adds included)."""
        frames = int(np.shape(row["codes"])[1])
        start = int(row.get("crop_start") or 0)
        audio = frames + (start == 0) + (start + frames >= int(row.get("num_frames") or frames)) + self.num_codebooks - 1
        prompt = self.template.format(text=row.get(self.text_column) or "", audio=self.tokens.span())
        return len(self.tokenizer(prompt)["input_ids"]) - 1 + audio

    def __call__(self, rows: list) -> dict | None:
        """A batch as the processor builds it, or None when no row has text (every row skipped and counted)."""
        texts, streams = [], []
        for item in rows:
            group = [r for r in (item if isinstance(item, (list, tuple)) else [item]) if self.has_text(r)]
            if not group:
                continue
            prompt, clips = "", []
            for row in group:
                if "output_dir" in row:
                    self.check_output(row["output_dir"])
                clip = self._stream(row, self._codes(row))
                clips.append(clip)
                text = self.template.format(text=self._text(row), audio=self.tokens.span())
                prompt += text.replace(self.tokens.audio, self._expansion(len(clip)))
            texts.append(prompt)
            streams.append(torch.cat(clips))
        if not texts:
            return None
        lengths = torch.tensor([len(s) for s in streams])
        audio = torch.full((len(streams), int(lengths.max()), self.num_codebooks), self.stream_eos, dtype=torch.long)
        for i, stream in enumerate(streams):
            audio[i, : len(stream)] = stream
        batch = dict(self.tokenizer(texts, **self.text_kwargs))
        labels = batch["input_ids"].clone()
        for token in (self.tokens.audio_id, self.tokenizer.pad_token_id, self.tokens.bos_id):
            if token is not None:
                labels[labels == token] = -100
        audio_labels = audio.clone()
        audio_labels[(audio_labels == self.stream_bos) | (audio_labels == self.stream_eos)] = -100
        return batch | {"audio_input_ids": audio, "audio_input_ids_mask": torch.arange(audio.shape[1])[None] < lengths[:, None],
                        "labels": labels, "audio_labels": audio_labels}


class HiggsBatcher(Batcher):
    """Token-budget batches of collated Higgs inputs, for `TokenDataset(batcher=...)`: B x (the longest row's
    text + audio positions) <= max_tokens, rows of similar length together (as `Batcher`). Rows without text are
    skipped (counted by the collator) before they are batched. The dataset's plan estimates batches from frames
    alone (the text is not in the commit records), so planned counts run a little high."""

    def __init__(self, collator: HiggsAudioV2Collator, max_tokens: int, buffer_rows: int = 2000,
                 max_rows: int | None = None):
        super().__init__(max_tokens, pad_id=collator.stream_eos, buffer_rows=buffer_rows, max_rows=max_rows)
        self.collator = collator

    def length(self, row: dict) -> int:
        return self.collator.sequence_length(row)

    def cost(self, rows: int, length: int, books: int) -> int:
        return rows * length

    def rows_per_batch(self, frames: float, books: int) -> float:
        fit = self.max_tokens / max(1.0, frames + books + 1)
        return max(1.0, min(fit, self.max_rows or fit))

    def collate(self, rows: list[dict]) -> dict:
        return self.collator(rows)

    def batches(self, rows, rng):
        return super().batches((r for r in rows if self.collator.has_text(r)), rng)
