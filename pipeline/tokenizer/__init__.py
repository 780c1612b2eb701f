"""The tokenizer interface (`base`) and its kinds: Higgs Audio V2 (`higgs`, the default).

Callers import from here, never from `codec`: the interface, the registry's doors, and the types the pipeline
hands a tokenizer (`FileWave`, `BatchPolicy`, the input error).
"""

from .base import (Resolved, Tokenizer, TokenizerSpecError, kind_of, kinds, load_tokenizer, resolve_tokenizer,
                   tokenizer_class, tokenizer_from_identity)
from .higgs import BatchPolicy, CodecInputError, FileWave, HiggsTokenizer, release_freed_heap, resolve_device

__all__ = ["BatchPolicy", "CodecInputError", "FileWave", "HiggsTokenizer", "Resolved", "Tokenizer",
           "TokenizerSpecError", "kind_of", "kinds", "load_tokenizer", "release_freed_heap", "resolve_device",
           "resolve_tokenizer", "tokenizer_class", "tokenizer_from_identity"]
