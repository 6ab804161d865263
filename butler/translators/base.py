"""What a header translator is, and what it produces.

A translator turns the headers of one raw FITS file (read without its pixels) into
:class:`RawUnit` objects, one per detector in the file. Each unit says *what* was observed
(:class:`Observation`: the data ID and the exposure's facts) and *where the planes are*
(:class:`PixelLayout`: which HDU holds the pixels, the variance or its stand-in, the mask,
and how to convert them into the butler's one image model).

The layout travels with the dataset in its offset index, so any client (local, remote,
through a proxy or a mirror) reads the file into the same :class:`~butler.image.Image`
without running the translator again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from astropy.io import fits

from butler.errors import ButlerError

__all__ = [
    "FileHeaders",
    "HduRef",
    "MissingHeaderKeysError",
    "Observation",
    "PixelLayout",
    "RawUnit",
    "Translator",
    "UnknownInstrumentError",
    "VarianceKind",
]

VarianceKind = Literal["variance", "stddev", "inverse_variance"]
"""What the variance HDU of a source stores: variance, sigma (``ERR``/``RMS``/``UNC``) or
inverse variance (weight maps)."""

TRANSLATOR_GROUP = "butler.translators"
"""Entry-point group under which packages register extra translators."""


class UnknownInstrumentError(ButlerError, ValueError):
    """No translator recognises a file, or the chosen one misses header keys it needs."""

    error_type = "UnknownInstrumentError"


class MissingHeaderKeysError(UnknownInstrumentError):
    """A translator recognised the file but keys it needs are absent."""

    error_type = "MissingHeaderKeysError"

    def __init__(self, translator: str, missing: Sequence[str], where: str) -> None:
        self.translator = translator
        self.missing = list(missing)
        super().__init__(
            f"{where}: the {translator} translator needs header keys {', '.join(self.missing)}, "
            "which are missing. Add them to the file, pass --instrument NAME to pick another "
            "translator, or register one for this layout (entry-point group "
            f"{TRANSLATOR_GROUP!r}; see docs/images.md)."
        )


@dataclass(frozen=True)
class HduRef:
    """One HDU of one of a raw's files: ``file`` is ``main`` or a companion's role."""

    hdu: int
    file: str = "main"


@dataclass(frozen=True)
class PixelLayout:
    """Where a detector's planes are and how to turn them into the common image model.

    ``mask_bits`` maps a source bit number to a common plane name (``BAD``, ``SAT``, ``CR``,
    ``EDGE``, ``NO_DATA``, ``SUSPECT``, ...); ``mask_values`` maps whole source values (masks
    that store codes, not bits, such as DECam's community-pipeline ``dqmask``) to a plane.
    Source bits with no mapping become ``SUSPECT``, so nothing flagged is silently dropped.
    ``gain`` (electrons per data unit), ``read_noise`` (electrons) and ``bias`` (the
    pedestal in data units still present in the pixels) let the reader estimate a variance
    when the source stores none.
    """

    image: HduRef
    variance: HduRef | None = None
    variance_kind: VarianceKind = "variance"
    mask: HduRef | None = None
    mask_bits: Mapping[int, str] = field(default_factory=dict)
    mask_values: Mapping[int, str] = field(default_factory=dict)
    mask_is_lsst: bool = False
    gain: float | None = None
    read_noise: float | None = None
    bias: float = 0.0
    unit: str | None = None
    metadata: HduRef = HduRef(0)

    def refs(self) -> dict[str, HduRef]:
        """The HDUs this layout uses, by role (``metadata``, ``image``, ``variance``, ``mask``)."""
        out = {"metadata": self.metadata, "image": self.image}
        if self.variance is not None:
            out["variance"] = self.variance
        if self.mask is not None:
            out["mask"] = self.mask
        return out

    def stored(self, positions: Mapping[str, int]) -> dict[str, Any]:
        """The JSON form kept in the offset index, with HDUs as positions in the stored file."""
        out: dict[str, Any] = {
            "variance_kind": self.variance_kind if self.variance is not None else None,
            "mask_bits": {str(k): v for k, v in self.mask_bits.items()},
            "mask_values": {str(k): v for k, v in self.mask_values.items()},
            "mask_is_lsst": self.mask_is_lsst,
            "gain": self.gain,
            "read_noise": self.read_noise,
            "bias": self.bias,
            "unit": self.unit,
        }
        for role in ("metadata", "image", "variance", "mask"):
            out[role] = positions.get(role)
        return out


@dataclass(frozen=True)
class Observation:
    """The facts about one detector's exposure that become dimension records and a data ID.

    Times are ISO-8601 UTC strings; ``tracking_ra``/``tracking_dec`` are ICRS degrees;
    ``exposure_time`` is in seconds; ``day_obs`` is the observing night as ``YYYYMMDD``.
    A fact the header does not determine is None (a translator says why in
    :attr:`RawUnit.warnings`), never a made-up default: a query over exposure times or
    pointings must not match values nobody measured.
    """

    instrument: str
    exposure: int
    detector: int
    physical_filter: str | None
    band: str | None
    day_obs: int
    exposure_time: float | None
    datetime_begin: str | None = None
    datetime_end: str | None = None
    tracking_ra: float | None = None
    tracking_dec: float | None = None
    visit: int | None = None
    detector_name: str | None = None
    obs_id: str | None = None
    observation_type: str | None = None
    target_name: str | None = None
    telescope: str | None = None
    translator: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def data_id(self) -> dict[str, Any]:
        return {"instrument": self.instrument, "exposure": self.exposure, "detector": self.detector}


@dataclass(frozen=True)
class RawUnit:
    """One detector of one raw file: what it is and where its planes are.

    ``warnings`` are one line each, starting with the fact concerned (``exposure_time:``,
    ``tracking_ra/tracking_dec:``, ``instrument:``...): facts left null because the header
    does not determine them, and facts taken from a fallback keyword.
    ``butler ingest-raws`` prints them under the file's line.
    """

    observation: Observation
    layout: PixelLayout
    warnings: tuple[str, ...] = ()


@dataclass
class FileHeaders:
    """The headers of every HDU of one file (read without the pixels) and its offset index."""

    path: Path
    index: Mapping[str, Any]
    headers: list[fits.Header]

    @property
    def primary(self) -> fits.Header:
        return self.headers[0]

    def hdu(self, position: int) -> Mapping[str, Any]:
        hdu: Mapping[str, Any] = self.index["hdus"][position]
        return hdu

    def pixel_hdus(self) -> list[int]:
        """Positions of HDUs that hold a 2-D image with pixels (plain or tile-compressed)."""
        from butler.formatters.fits_index import is_image_hdu

        return [h["index"] for h in self.index["hdus"] if is_image_hdu(h)]

    def find(self, name: str, ver: int | None = None) -> int | None:
        """Position of the first HDU called ``name`` (and of EXTVER ``ver``) that has pixels."""
        for position in self.pixel_hdus():
            hdu = self.hdu(position)
            if hdu["name"] == name.upper() and (ver is None or hdu["ver"] == ver):
                return position
        return None

    def merged(self, position: int) -> dict[str, Any]:
        """Primary header cards overlaid with those of HDU ``position`` (extension wins),
        the view most translators need: exposure facts live in the primary, detector facts
        in the extension."""
        out = _cards(self.primary)
        if position:
            out.update(_cards(self.headers[position]))
        return out

    def comments(self, position: int) -> dict[str, str]:
        """The card comments of :meth:`merged` (same overlay), where a header states a
        keyword's unit (DSS: ``EXPOSURE = 70.0 / Exposure time minutes``)."""
        out = _comments(self.primary)
        if position:
            out.update(_comments(self.headers[position]))
        return out


def _comments(header: fits.Header) -> dict[str, str]:
    out: dict[str, str] = {}
    for card in header.cards:
        key = card.keyword
        if not key or key in ("COMMENT", "HISTORY") or key in out:
            continue
        try:
            out[key] = str(card.comment or "")
        except (ValueError, KeyError, fits.VerifyError):  # as in _cards: skip a broken card
            continue
    return out


def _cards(header: fits.Header) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if not key or key in ("COMMENT", "HISTORY") or key in out:
            continue
        try:
            out[key] = card.value
        except (ValueError, KeyError, fits.VerifyError):  # a broken card is not worth failing for
            continue
    return out


class Translator(ABC):
    """Recognises one instrument's files and describes them.

    Subclasses set ``name`` (what ``--instrument`` selects) and ``layout_doc`` (the file
    layout assumed, shown by ``butler ingest-raws --list-translators`` and in the docs).
    """

    name: ClassVar[str]
    layout_doc: ClassVar[str] = ""
    priority: ClassVar[int] = 50
    """Lower runs first in auto-detection; the generic fallback is last."""

    @abstractmethod
    def can_translate(self, headers: FileHeaders) -> bool:
        """True if this translator recognises the file (cheap: look at a few keys)."""

    @abstractmethod
    def translate(self, headers: FileHeaders) -> list[RawUnit]:
        """One unit per detector in the file; raises :class:`MissingHeaderKeysError`."""

    def companions(self, path: Path) -> dict[str, Path]:
        """Files that hold this file's variance or mask (role -> path), if the layout splits
        them from the image; only those that exist are returned."""
        return {}

    def is_companion(self, path: Path) -> bool:
        """True for a variance/mask file ingested with its image, not on its own."""
        return False

    def require(self, cards: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
        """Raise :class:`MissingHeaderKeysError` naming every key of ``keys`` not present."""
        missing = [k for k in keys if cards.get(k) in (None, "")]
        if missing:
            raise MissingHeaderKeysError(self.name, missing, where)

    def require_ints(self, cards: Mapping[str, Any], keys: Sequence[str], where: str) -> list[int]:
        """The integer values of ``keys``; a missing or non-integer one raises
        :class:`MissingHeaderKeysError` (an ID made of a silent 0 would collide)."""
        from butler.translators.helpers import as_int

        self.require(cards, keys, where)
        values = [as_int(cards[k]) for k in keys]
        bad = [
            f"{k} (an integer; got {cards[k]!r})"
            for k, v in zip(keys, values, strict=True)
            if v is None
        ]
        if bad:
            raise MissingHeaderKeysError(self.name, bad, where)
        return [v for v in values if v is not None]
