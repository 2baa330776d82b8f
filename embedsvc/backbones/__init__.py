"""Named backbones and the process-wide backbone cache.

A backbone is configuration: ``load_backbone("minilm")``, ``load_backbone("smollm2")`` or
``load_backbone("/path/to/any/hf/folder")`` all return a :class:`Backbone`. Each named backbone
lives in its own module here and registers a *resolver* (cache dir -> local folder, converting on
first use), so adding one is adding a file. Loading is cached
per process because a model costs hundreds of MB and seconds to load; strategies that share a
backbone share one copy.
"""

from __future__ import annotations

import threading
from pathlib import Path

from embedsvc.backbones.base import Backbone, BackboneKind, BackboneResolver
from embedsvc.errors import NotFound
from embedsvc.plugins import import_plugins

_RESOLVERS: dict[str, BackboneResolver] = {}
_CACHE: dict[tuple[str, str], Backbone] = {}
_KEY_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCK = threading.Lock()


def register_backbone(name: str, resolver: BackboneResolver) -> None:
    """Make ``name`` loadable; ``resolver(cache_dir)`` returns its local HF model folder."""
    with _LOCK:
        if name in _RESOLVERS and _RESOLVERS[name] is not resolver:
            raise ValueError(f"backbone {name!r} registered twice")
        _RESOLVERS[name] = resolver


def available_backbones() -> list[str]:
    """Registered backbone names (any local model folder works too)."""
    return sorted(_RESOLVERS)


def _cache_dir(cache_dir: Path | None) -> Path:
    from embedsvc.config import default_cache_dir

    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def _unknown(name_or_path: str) -> NotFound:
    valid = ", ".join(available_backbones()) or "(none)"
    return NotFound(
        f"unknown backbone {name_or_path!r}: not a registered name ({valid}) and not an existing "
        "local model folder",
        field="backbone",
    )


def backbone_path(name_or_path: str, cache_dir: Path | None = None) -> Path:
    """The local folder a backbone name (or folder path) loads from.

    For a registered name this may convert and cache the weights first (SmolLM2: ~25 s once).
    """
    resolver = _RESOLVERS.get(name_or_path)
    if resolver is not None:
        return resolver(_cache_dir(cache_dir))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    raise _unknown(name_or_path)


def load_backbone(name_or_path: str, cache_dir: Path | None = None) -> Backbone:
    """Load (once per process and thread-safely) the backbone ``name_or_path``.

    Raises ``NotFound`` for a string that is neither a registered name nor a local folder.
    """
    if name_or_path in _RESOLVERS:
        key = (name_or_path, str(_cache_dir(cache_dir)))
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            raise _unknown(name_or_path)
        key = (str(path.resolve()), "")
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    # One lock per backbone: loading minilm does not wait for a smollm2 conversion.
    with key_lock:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        from embedsvc.backbones.loading import load_folder

        folder = backbone_path(name_or_path, cache_dir)
        backbone = load_folder(folder, name=name_or_path)
        with _LOCK:
            _CACHE[key] = backbone
        return backbone


def clear_backbone_cache() -> None:
    """Forget loaded backbones (tests; frees memory once no strategy holds them)."""
    with _LOCK:
        _CACHE.clear()


# Named backbones (every other module here) register themselves on import; they import
# nothing heavy at module level.
import_plugins(__name__, __path__, skip=("base", "loading"))

__all__ = [
    "Backbone",
    "BackboneKind",
    "BackboneResolver",
    "available_backbones",
    "backbone_path",
    "clear_backbone_cache",
    "load_backbone",
    "register_backbone",
]
