"""Which translators exist, and which one reads a given file.

Built-in translators are listed here; packages add more through the entry-point group
``butler.translators`` (each entry point names a :class:`~butler.translators.base.Translator`
subclass), e.g. in ``pyproject.toml``::

    [project.entry-points."butler.translators"]
    MYCAM = "mycam_butler.translator:MyCamTranslator"

Auto-detection asks each translator, lowest ``priority`` first, whether it recognises the
file; the generic fallback comes last.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from butler.translators.base import (
    TRANSLATOR_GROUP,
    FileHeaders,
    MissingHeaderKeysError,
    Translator,
    UnknownInstrumentError,
)

__all__ = ["TranslatorRegistry", "choose_translator"]

log = logging.getLogger(__name__)

_BUILTIN = (
    "butler.translators.amt:AstroMetadataTranslator",
    "butler.translators.lsst:LsstTranslator",
    "butler.translators.hst:HstTranslator",
    "butler.translators.gemini:GmosTranslator",
    "butler.translators.spitzer:IracTranslator",
    "butler.translators.euclid:EuclidVisTranslator",
    "butler.translators.roman:RomanTranslator",
    "butler.translators.generic:GenericTranslator",
)


def _load(spec: str) -> type[Translator]:
    module, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Translator)):
        raise UnknownInstrumentError(f"{spec} is not a butler.translators.base.Translator")
    return cls


class TranslatorRegistry:
    """The built-in translators plus those registered by entry points or at run time."""

    def __init__(
        self, extra: Sequence[type[Translator]] = (), entry_points_too: bool = True
    ) -> None:
        classes = [_load(spec) for spec in _BUILTIN]
        if entry_points_too:
            for ep in entry_points(group=TRANSLATOR_GROUP):
                try:
                    classes.append(_load(ep.value))
                except (ImportError, AttributeError, UnknownInstrumentError) as exc:
                    # A broken plugin must not stop ingest of every other instrument.
                    log.warning(
                        "translator entry point %s (%s) ignored: %s", ep.name, ep.value, exc
                    )
        classes.extend(extra)
        self.translators: list[Translator] = sorted(
            (cls() for cls in classes), key=lambda t: t.priority
        )

    def names(self) -> list[str]:
        return [t.name for t in self.translators]

    def by_name(self, name: str) -> Translator:
        for translator in self.translators:
            if translator.name.lower() == name.lower():
                return translator
        raise UnknownInstrumentError(
            f"no translator called {name!r}; installed: {', '.join(self.names())}. "
            f"Use --instrument auto, or register one under the entry-point group "
            f"{TRANSLATOR_GROUP!r}."
        )

    def companion_owner(self, path_name: str) -> Translator | None:
        """The translator that treats a file of this name as a companion (weight, mask)."""
        for translator in self.translators:
            if translator.is_companion(Path(path_name)):
                return translator
        return None


def choose_translator(
    registry: TranslatorRegistry, headers: FileHeaders, instrument: str = "auto"
) -> Translator:
    """The translator for a file: the named one, or the first that recognises it."""
    if instrument != "auto":
        return registry.by_name(instrument)
    for translator in registry.translators:
        if translator.can_translate(headers):
            return translator
    primary = headers.primary
    shown = {k: primary.get(k) for k in ("TELESCOP", "INSTRUME", "DATE-OBS") if k in primary}
    raise MissingHeaderKeysError(
        "auto-detection",
        [
            "an image HDU (NAXIS >= 2)",
            *(k for k in ("TELESCOP", "INSTRUME", "DATE-OBS") if k not in primary),
        ],
        f"{headers.path} (header has {shown or 'none of TELESCOP/INSTRUME/DATE-OBS'})",
    )
