"""``cryoden models``: the available models, one per line.

Imports only the standard library at import time (it is imported by :mod:`.main`); the model
registry is imported when the command runs.
"""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, printable
from ._common import note as _note

HELP = "list the available models, one per line: name, then description"
DESCRIPTION = None
EPILOG = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--long", action="store_true",
                   help="print each description whole (default: its first line, cut at 100 characters)")


def _short_description(card: dict, limit: int | None = 100) -> str:
    text = str(card.get("description") or card.get("architecture") or "").strip()
    if limit is None:
        return " ".join(text.split()) or "(no description)"
    text = text.splitlines()[0] if text else "(no description)"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def run(args: argparse.Namespace) -> int:
    from ..models import DEFAULT_MODEL as default, DEFAULT_MODEL_2D as default_2d, available_models, builtin_model_dir
    from ..models import user_model_dir

    skipped: list[str] = []
    models = available_models(skipped)
    for reason in skipped:
        _note(f"skipped a malformed model card: {reason}")
    if not models:
        _note(f"no models found in {builtin_model_dir()} or {user_model_dir()}")
        return EXIT_OK
    width = max(len(name) for name in models)
    for name, card in models.items():
        extra = []
        if isinstance(card.get("voxel_size_A"), (int, float)):
            extra.append(f"{card['voxel_size_A']:g} Å/voxel")
        if name == default:
            extra.append("default")
        elif name == default_2d:
            extra.append("2D default")
        tail = f" [{', '.join(extra)}]" if extra else ""
        print(printable(f"{name:<{width}}  {_short_description(card, None if getattr(args, 'long', False) else 100)}"
                        f"{tail}"))
    return EXIT_OK
