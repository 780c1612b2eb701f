"""An offline Higgs Audio V2 setup for tests and the training example: a small word-level text tokenizer holding
the special tokens the processor and the chat template use, and a tiny `HiggsAudioV2Config` from code. Nothing
is downloaded; the model's weights are random."""

from __future__ import annotations

import re

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|unk|>", "<|AUDIO_OUT|>", "<|audio_out_bos|>", "<|audio_eos|>",
           "<|reserved_special_token_6|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def text_tokenizer(words: list[str] | None = None, add_bos: bool = True, **kwargs):
    """A fast tokenizer: special tokens, then the words of `words` (others become <|unk|>); BOS added when
    `add_bos`, as Llama 3's. kwargs go to PreTrainedTokenizerFast (e.g. padding_side)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for word in sorted({w for text in words or [] for w in re.findall(r"\w+|[^\w\s]", text)}):
        vocab.setdefault(word, len(vocab))
    for word in ("system", "user", "assistant"):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>",
                                   pad_token="<|end_of_text|>", unk_token="<|unk|>",
                                   model_input_names=["input_ids", "attention_mask"], **kwargs)
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[3:]})
    return fast


def model_config(tokenizer, num_codebooks: int = 8, codebook_size: int = 1024):
    """A tiny HiggsAudioV2Config for `tokenizer`; codebook_size is the audio tokenizer's plus 2 (the stream
    BOS / EOS ids follow the codes in the audio embedding)."""
    from transformers import HiggsAudioV2Config

    ids = tokenizer.convert_tokens_to_ids
    return HiggsAudioV2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=4096, num_codebooks=num_codebooks,
        codebook_size=codebook_size + 2, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=ids("<|eot_id|>"), audio_token_id=ids("<|AUDIO_OUT|>"), audio_bos_token_id=ids("<|audio_out_bos|>"),
        audio_delay_token_id=ids("<|reserved_special_token_6|>"), audio_stream_bos_id=codebook_size,
        audio_stream_eos_id=codebook_size + 1)
