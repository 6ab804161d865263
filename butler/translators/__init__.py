"""Header translators: from the headers of a raw file to data IDs, dimension records and the
layout of its planes (see :mod:`butler.translators.base`, and docs/images.md for each
instrument's assumed layout)."""

from butler.translators.base import (
    FileHeaders,
    HduRef,
    MissingHeaderKeysError,
    Observation,
    PixelLayout,
    RawUnit,
    Translator,
    UnknownInstrumentError,
)
from butler.translators.registry import TranslatorRegistry, choose_translator

__all__ = [
    "FileHeaders",
    "HduRef",
    "MissingHeaderKeysError",
    "Observation",
    "PixelLayout",
    "RawUnit",
    "Translator",
    "TranslatorRegistry",
    "UnknownInstrumentError",
    "choose_translator",
]
