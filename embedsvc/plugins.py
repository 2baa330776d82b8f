"""Plug-in discovery: a plug-in family is a package whose modules register themselves.

Strategies, index kinds and backbones each call :func:`import_plugins` from their package
``__init__``; adding a plug-in is adding a module, never editing a list or a switch.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_plugins(package: str, path: Iterable[str], skip: Iterable[str] = ("base",)) -> None:
    """Import every module of ``package`` except ``skip`` and private (``_``) ones."""
    skipped = set(skip)
    for module in pkgutil.iter_modules(path):
        if module.name not in skipped and not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
