"""The Higgs Audio V2 collator against transformers' own processor: clips tokenized by the pipeline's codec
(random:tiny, model_card convention), written as an output (ShardWriter + RunState commits), read back through
TokenDataset, collated, and compared tensor for tensor with `HiggsAudioV2Processor` on the raw audio, built
offline from the same tokenizer weights, `DacFeatureExtractor` and a word-level text tokenizer."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from demo.higgs_tiny import model_config, text_tokenizer
from demo.synth_tokens import write_rows
from pipeline.reading.dataset import TokenDataset
from pipeline.reading.higgs import HiggsAudioV2Collator, HiggsBatcher, OutputRefused, chat_prompt

TEXTS = ["hello there", "a longer sentence with more words in it than the others", "x", "two words",
         "the fifth clip is the longest one"]
SAMPLES = [4000, 9600, 23999, 961, 41000]  # whole hops and not, under a frame to nearly two seconds
SPAN = "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>"
TEXT = [pa.field("text", pa.string())]
# the checkpoint's chat template as transformers' processor test holds it, cut to what a row's conversation uses
CHAT_TEMPLATE = """{{- bos_token }}{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- messages[0]['content'][0]['text']|trim }}{{- "<|eot_id|>" }}
{%- for message in messages[1:] %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {%- if message['role'] == 'assistant' %}{{- '<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>' }}
    {%- else %}{{- message['content'][0]['text'] | trim }}{%- endif %}
    {{- '<|eot_id|>' }}
{%- endfor %}"""


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(7)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in SAMPLES]


@pytest.fixture(scope="module")
def output(tmp_path_factory, tiny_codec, clips):
    """An output of the clips' codes and transcripts, in two shards; {key: index into TEXTS / clips}."""
    codes = tiny_codec.encode(clips, 2.0)
    url = str(tmp_path_factory.mktemp("higgs") / "out")
    rows = [(f"clip{i}", c, {"text": t}) for i, (c, t) in enumerate(zip(codes, TEXTS))]
    write_rows(url, [rows[:2], rows[2:]], num_codebooks=8, fields=TEXT, identity={"convention": "model_card"})
    return url


@pytest.fixture(scope="module")
def rows(output):
    return {row["key"]: row for row in TokenDataset(output)}


def processor_for(tokenizer, codec, chat_template=None):
    from transformers import DacFeatureExtractor, HiggsAudioV2Processor

    extractor = DacFeatureExtractor(sampling_rate=24000, hop_length=codec.hop_length)
    return HiggsAudioV2Processor(extractor, tokenizer, codec.model, chat_template=chat_template)


def assert_same(batch, expected):
    assert sorted(batch) == sorted(expected)
    for name, tensor in expected.items():
        assert batch[name].dtype == tensor.dtype and batch[name].shape == tensor.shape, name
        assert torch.equal(batch[name], tensor), name


@pytest.mark.parametrize("padding_side", [None, "right"])  # "right": the tokenizer's own setting wins, as in the processor
def test_collated_batches_equal_the_processors_from_raw_audio(rows, clips, tiny_codec, padding_side):
    tokenizer = text_tokenizer(TEXTS, **({"padding_side": padding_side} if padding_side else {}))
    processor = processor_for(tokenizer, tiny_codec)
    collator = HiggsAudioV2Collator(tokenizer, template="{text}{audio}", text_column="text")

    def reference(texts, indices):
        return processor(text=texts, audio=[clips[i] for i in indices], output_labels=True, return_tensors="pt",
                         padding=True, sampling_rate=24000)

    # texts of unequal lengths, one clip each
    batch = collator([rows[f"clip{i}"] for i in range(5)])
    assert_same(batch, reference([t + SPAN for t in TEXTS], range(5)))
    # two clips in one text, beside a text of one
    batch = collator([[rows["clip3"], rows["clip1"]], rows["clip0"]])
    expected = reference([TEXTS[3] + SPAN + TEXTS[1] + SPAN, TEXTS[0] + SPAN], [3, 1, 0])
    assert_same(batch, expected)
    assert collator.sequence_length(rows["clip2"]) == int(collator([rows["clip2"]])["attention_mask"].sum())


def test_chat_prompt_gives_the_batch_the_processor_builds_from_the_rendered_conversation(rows, clips, tiny_codec):
    tokenizer = text_tokenizer(TEXTS + ["Generate audio following instruction."])
    processor = processor_for(tokenizer, tiny_codec, CHAT_TEMPLATE)
    system = "Generate audio following instruction."
    template = chat_prompt(tokenizer, system, CHAT_TEMPLATE)
    conversations = [[{"role": "system", "content": [{"type": "text", "text": system}]},
                      {"role": "user", "content": [{"type": "text", "text": TEXTS[i]}]},
                      {"role": "assistant", "content": [{"type": "audio"}]}] for i in (1, 4)]
    rendered = processor.apply_chat_template(conversations, tokenize=False)
    assert all(r.startswith(tokenizer.bos_token) for r in rendered)  # dropped: the tokenizer adds its own
    expected = processor(text=[r[len(tokenizer.bos_token):] for r in rendered], audio=[clips[1], clips[4]],
                         output_labels=True, return_tensors="pt", padding=True, sampling_rate=24000)
    assert_same(HiggsAudioV2Collator(tokenizer, template=template)([rows["clip1"], rows["clip4"]]), expected)


def test_outputs_the_processor_cannot_match_are_refused(tmp_path, rows):
    tokenizer = text_tokenizer(TEXTS)
    collator = HiggsAudioV2Collator(tokenizer)
    codes = np.zeros((8, 5), np.int16)
    write_rows(str(tmp_path / "authors"), [[("a", codes, {"text": "x"})]], 8, fields=TEXT, identity={"convention": "authors"})
    with pytest.raises(OutputRefused, match="codec.convention=authors"):
        collator(list(TokenDataset(str(tmp_path / "authors"))))
    write_rows(str(tmp_path / "low"), [[("a", codes[:4], {"text": "x"})]], 4, fields=TEXT)
    with pytest.raises(OutputRefused, match="holds 4 codebooks"):
        collator(list(TokenDataset(str(tmp_path / "low"))))
    bad = codes.copy()
    bad[2, 3] = 1025
    write_rows(str(tmp_path / "range"), [[("ok", codes, {"text": "x"}), ("bad", bad, {"text": "x"})]], 8, fields=TEXT)
    with pytest.raises(ValueError, match=r"row 'bad' of shard 'synthetic/s000000': code 1025 outside \[0, 1024\)"):
        collator(list(TokenDataset(str(tmp_path / "range"))))
    with pytest.raises(ValueError, match="holds the audio token '<\\|AUDIO_OUT\\|>'"):
        collator([dict(rows["clip0"], text="say <|AUDIO_OUT|> twice")])


def test_rows_without_text_are_skipped_and_counted(rows):
    collator = HiggsAudioV2Collator(text_tokenizer(TEXTS))
    batch = collator([dict(rows["clip0"], text=None), rows["clip1"], dict(rows["clip2"], text="")])
    assert collator.skipped == 2 and batch["input_ids"].shape[0] == 1
    assert collator([dict(rows["clip0"], text=None)]) is None and collator.skipped == 3


def test_a_crop_keeps_the_stream_bos_at_the_clips_start_and_eos_at_its_end_only(output):
    collator = HiggsAudioV2Collator(text_tokenizer(TEXTS))
    windows = [w for w in TokenDataset(output, crop_frames=20, crop="consecutive") if w["key"] == "clip4"]
    assert [w["crop_start"] for w in windows] == [0, 20, 40] and windows[0]["num_frames"] == 43
    streams = [collator([w])["audio_input_ids"][0] for w in windows]
    bos_frames = [bool((s == 1024).all(-1).any()) for s in streams]
    eos_frames = [bool((s == 1025).all(-1).any()) for s in streams]
    assert bos_frames == [True, False, False] and eos_frames == [False, False, True]
    # the windows' codes, delay undone, are the clip's codes in order
    undone = [torch.stack([s[k : k + len(s) - 7, k] for k in range(8)]) for s in streams]
    codes = torch.cat([undone[0][:, 1:], undone[1], undone[2][:, :-1]], dim=1)
    assert torch.equal(codes, torch.cat([w["codes"] for w in windows], dim=1))


def test_a_tiny_higgs_model_takes_a_collated_token_budget_batch_and_trains(output):
    from transformers import HiggsAudioV2ForConditionalGeneration

    tokenizer = text_tokenizer(TEXTS)
    torch.manual_seed(0)
    model = HiggsAudioV2ForConditionalGeneration(model_config(tokenizer))
    batcher = HiggsBatcher(HiggsAudioV2Collator(tokenizer), max_tokens=200, buffer_rows=8)
    batches = list(TokenDataset(output, batcher=batcher))
    assert all(b["input_ids"].numel() <= 200 or len(b["input_ids"]) == 1 for b in batches)
    assert sum(len(b["input_ids"]) for b in batches) == 5 and len(batches) > 1
    batch = max(batches, key=lambda b: len(b["input_ids"]))
    loss = model(**{k: v for k, v in batch.items() if k != "labels"}).loss
    assert math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in model.model.embed_audio_tokens.parameters())


def test_train_higgs_example_runs_a_few_steps(output):
    from jobs import train_higgs

    losses = train_higgs.main([output, "--steps", "2", "--max-tokens", "200", "--workers", "1"])
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
