"""Kinds registered by name: a base class's `__init_subclass__(kind=...)` files each subclass under its name.

Source kinds (`pipeline.sources.base.Source`) and tokenizer kinds (`pipeline.tokenizer.base.Tokenizer`) plug in
this way, so adding one is a new module, not an edit of an if-chain.
"""

from __future__ import annotations


def register(registry: dict[str, type], kind: str, cls: type, what: str) -> None:
    """File `cls` under `kind` and set its `KIND`; TypeError when another class holds the name (the same class
    defined again, a module imported twice, replaces itself)."""
    known = registry.get(kind)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"{what} kind {kind!r} is {known.__module__}.{known.__qualname__} already")
    cls.KIND = kind
    registry[kind] = cls
