"""Decoder-LLM strategies on a prompt's last token: ``prompt_last`` and ``token_prepending``.

``model.py`` holds the core (the decoder's last-token states, with Token Prepending in the
blocks), ``prompts.py`` the pre stage (PromptEOL-style templates, template-preserving
truncation) and the strategy base; each registered strategy is one module beside them.
"""

from __future__ import annotations

from embedsvc.plugins import import_plugins

import_plugins(__name__, __path__, skip=("model", "prompts"))
