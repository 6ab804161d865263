"""The FITS offset index and pixel decoding at their edges, against astropy's reading of the
same files (real files shipped with astropy where one exists, else files astropy writes):
scaled and pseudo-unsigned pixels, BLANK, bit and byte columns, random groups, ASCII tables,
a heap outside its table, negative axes, and headers leaving out what has a default.

Written to kill the mutants of ``butler/formatters/fits_index.py`` that survived the rest of
the suite (``bench/mutation/run.py fits-index``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.wcs import WCS
from real_data import fits_test_file, hst_wfpc2

from butler.errors import CorruptFileError
from butler.formatters.fits_index import (
    BLOCK,
    SOURCE_READ,
    apply_scaling,
    decode_image,
    ensure_index,
    find_hdu,
    index_fits,
    index_fits_source,
    is_image_hdu,
    padded,
    parse_tform,
    wcs_from_header,
)
from butler.io.source import LocalFileSource


def hdu_of(path: Path, position: int = 0) -> dict[str, Any]:
    hdu: dict[str, Any] = index_fits(path)["hdus"][position]
    return hdu


def decoded(path: Path, position: int = 0) -> np.ndarray[Any, Any]:
    """The HDU's pixels as the index and decode_image read them from the file's bytes."""
    hdu = hdu_of(path, position)
    start = hdu["data_offset"]
    raw = path.read_bytes()[start : start + hdu["data_size"]]
    return decode_image(raw, hdu, hdu["shape"])


def assert_same_pixels(ours: np.ndarray[Any, Any], astropys: np.ndarray[Any, Any]) -> None:
    assert ours.dtype == astropys.dtype
    assert ours.shape == astropys.shape
    np.testing.assert_array_equal(ours, astropys)  # NaN where astropy has NaN


# -- pixels ----------------------------------------------------------------------------------


def test_a_real_scaled_image_decodes_as_astropy_reads_it() -> None:
    path = fits_test_file("scale.fits")  # int16, BSCALE 0.0458, BZERO 1500
    assert_same_pixels(decoded(path), fits.getdata(path))


def test_a_real_blank_integer_image_gets_nan_where_astropy_does() -> None:
    path = fits_test_file("blank.fits")  # int64 with BLANK = 2 and no scaling
    expected = fits.getdata(path)
    assert np.isnan(expected).any()  # the case under test is there
    assert_same_pixels(decoded(path), expected)


def test_int8_pixels_written_by_astropy_decode_signed(tmp_path: Path) -> None:
    """FITS has no signed bytes: astropy stores int8 as BITPIX 8 with BZERO -128."""
    data = np.array([[-128, -1, 0], [1, 64, 127]], dtype=np.int8)
    path = tmp_path / "int8.fits"
    fits.PrimaryHDU(data).writeto(path)
    assert fits.getheader(path)["BZERO"] == -128
    ours = decoded(path)
    assert ours.dtype == np.int8
    assert_same_pixels(ours, fits.getdata(path))
    np.testing.assert_array_equal(ours, data)


@pytest.mark.parametrize(
    ("bscale", "bzero"), [(2.0, 0.0), (2.0, 1.0), (2.0, 10.0), (0.5, -3.0), (2.0, -1.0)]
)
def test_images_astropy_scales_decode_as_astropy_reads_them(
    tmp_path: Path, bscale: float, bzero: float
) -> None:
    physical = np.linspace(-100, 100, 24, dtype=np.float32).reshape(4, 6).round()
    hdu = fits.PrimaryHDU(physical.copy())
    hdu.scale("int16", bscale=bscale, bzero=bzero)
    path = tmp_path / "scaled.fits"
    hdu.writeto(path)
    header = fits.getheader(path)
    assert (header["BSCALE"], header.get("BZERO", 0.0)) == (bscale, bzero)
    assert_same_pixels(decoded(path), fits.getdata(path))


def test_blank_pixels_of_a_scaled_integer_image_are_nan(tmp_path: Path) -> None:
    stored = np.array([[1, -32768, 3], [-32768, 5, 6]], dtype=np.int16)
    path = tmp_path / "blank-scaled.fits"
    fits.PrimaryHDU(stored).writeto(path)
    with fits.open(path, mode="update", do_not_scale_image_data=True) as hdul:
        hdul[0].header["BSCALE"] = 1.5
        hdul[0].header["BLANK"] = -32768
    expected = fits.getdata(path)
    assert int(np.isnan(expected).sum()) == 2
    assert_same_pixels(decoded(path), expected)


# -- tables ----------------------------------------------------------------------------------


def test_bit_and_byte_columns_have_their_widths(tmp_path: Path) -> None:
    columns = [
        fits.Column(name="flags", format="11X", array=np.zeros((3, 11), dtype=bool)),
        fits.Column(name="bytes", format="3B", array=np.arange(9, dtype=np.uint8).reshape(3, 3)),
        fits.Column(name="one_bit", format="1X", array=np.zeros((3, 1), dtype=bool)),
        fits.Column(name="j", format="J", array=np.arange(3, dtype=np.int32)),
        fits.Column(name="bits17", format="17X", array=np.zeros((3, 17), dtype=bool)),
        fits.Column(name="c", format="C", array=np.ones(3, dtype=np.complex64)),
        fits.Column(name="m", format="M", array=np.ones(3, dtype=np.complex128)),
    ]
    path = tmp_path / "bits.fits"
    fits.BinTableHDU.from_columns(columns).writeto(path)
    hdu = hdu_of(path, 1)
    layout = [(c["name"], c["width"], c["offset"]) for c in hdu["columns"]]
    # FITS: nX takes ceil(n / 8) bytes; C is two 4-byte floats, M two 8-byte ones.
    assert layout == [
        ("flags", 2, 0),
        ("bytes", 3, 2),
        ("one_bit", 1, 5),
        ("j", 4, 6),
        ("bits17", 3, 10),
        ("c", 8, 13),
        ("m", 16, 21),
    ]
    assert hdu["naxis1"] == fits.getheader(path, 1)["NAXIS1"] == 37


def test_a_real_ascii_table_lists_its_columns() -> None:
    path = fits_test_file("ascii.fits")
    with fits.open(path) as hdul:
        names = list(hdul[1].columns.names)
    hdu = hdu_of(path, 1)
    assert hdu["kind"] == "table"
    assert [c["name"] for c in hdu["columns"]] == names


def test_a_heap_that_starts_inside_the_rows_is_refused_saying_where_rows_end(
    tmp_path: Path,
) -> None:
    source = fits_test_file("theap-gap.fits")  # real: THEAP past the rows, a gap before it
    header = fits.getheader(source, 1)
    rows_end = header["NAXIS1"] * header["NAXIS2"]
    path = tmp_path / "theap-inside.fits"
    path.write_bytes(source.read_bytes())
    with fits.open(path, mode="update") as hdul:
        hdul[1].header["THEAP"] = rows_end - 12  # inside the last row
    with pytest.raises(CorruptFileError) as raised:
        index_fits(path)
    assert f"rows end at byte {rows_end}," in str(raised.value)
    assert f"THEAP = {rows_end - 12}" in str(raised.value)


# -- random groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["random_groups.fits", "group.fits"])
def test_real_random_groups_files_are_sized_as_astropy_lays_them_out(name: str) -> None:
    path = fits_test_file(name)
    hdu = hdu_of(path)
    assert hdu["kind"] == "groups"
    with fits.open(path) as hdul:
        info = hdul.fileinfo(0)
        following = hdul.fileinfo(1)["hdrLoc"] if len(hdul) > 1 else path.stat().st_size
    assert hdu["data_offset"] == info["datLoc"]
    assert padded(hdu["data_size"]) == info["datSpan"] == following - info["datLoc"]


# -- headers that are wrong or leave things out ----------------------------------------------


def _file_of(*headers: fits.Header) -> bytes:
    """Header-only HDUs (no data), as bytes."""
    return b"".join(h.tostring().encode("ascii") for h in headers)


def test_an_axis_of_minus_one_is_refused(tmp_path: Path) -> None:
    header = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 1), ("NAXIS1", -1)])
    path = tmp_path / "negative.fits"
    path.write_bytes(_file_of(header))
    with pytest.raises(CorruptFileError, match="negative axis length"):
        index_fits(path)


def test_a_bintable_without_tfields_and_without_columns_is_indexed(tmp_path: Path) -> None:
    """TFIELDS defaults to no columns, which a table of zero-width rows agrees with."""
    primary = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)])
    table = fits.Header(
        [
            ("XTENSION", "BINTABLE"),
            ("BITPIX", 8),
            ("NAXIS", 2),
            ("NAXIS1", 0),
            ("NAXIS2", 0),
            ("PCOUNT", 0),
            ("GCOUNT", 1),
        ]
    )
    path = tmp_path / "no-tfields.fits"
    path.write_bytes(_file_of(primary, table))
    hdu = hdu_of(path, 1)
    assert hdu["kind"] == "bintable"
    assert hdu["columns"] == []


@pytest.mark.parametrize("left_out", [(b"ZTILE2",), (b"ZTILE1",), (b"ZTILE1", b"ZTILE2")])
def test_tiles_default_to_one_row_when_ztile_cards_are_left_out(
    tmp_path: Path, left_out: tuple[bytes, ...]
) -> None:
    """FITS tile compression: ZTILE1 defaults to the row length, ZTILEn (n > 1) to 1."""
    data = np.arange(40 * 30, dtype=np.int32).reshape(30, 40)  # 30 rows of 40
    path = tmp_path / "tiles.fits"
    fits.CompImageHDU(data, compression_type="RICE_1", tile_shape=(1, 40)).writeto(path)
    raw = path.read_bytes()
    for keyword in left_out:
        card = raw.index(keyword.ljust(8) + b"=")
        # The card becomes a comment of the same length: nothing else moves.
        raw = raw[:card] + b"COMMENT".ljust(80) + raw[card + 80 :]
    path.write_bytes(raw)
    with fits.open(path, disable_image_compression=True) as hdul:
        assert not any(k.encode() in left_out for k in hdul[1].header)
    hdu = hdu_of(path, 1)
    assert hdu["tile_shape"] == [1, 40]  # numpy order: one row of 40 per tile
    assert hdu["shape"] == [30, 40]


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_unsigned_pixels_written_by_astropy_decode_unsigned(tmp_path: Path, dtype: Any) -> None:
    """Pseudo-unsigned integers: BZERO 2^15, 2^31 or 2^63 over signed storage."""
    info = np.iinfo(dtype)
    data = np.array([[0, 1, info.max // 2], [info.max // 2 + 1, info.max - 1, info.max]], dtype)
    path = tmp_path / "unsigned.fits"
    fits.PrimaryHDU(data).writeto(path)
    assert fits.getheader(path)["BZERO"] == 2 ** (info.bits - 1)
    ours = decoded(path)
    assert_same_pixels(ours, fits.getdata(path))
    assert ours.dtype == dtype
    assert "blank" not in hdu_of(path)  # BZERO is not a BLANK
    np.testing.assert_array_equal(ours, data)


def test_an_image_with_an_empty_axis_is_not_an_image_to_read(tmp_path: Path) -> None:
    path = tmp_path / "empty-axis.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(np.zeros((0, 5), np.float32), name="EMPTY")]
    ).writeto(path)
    hdu = hdu_of(path, 1)
    assert hdu["kind"] == "image"
    assert hdu["shape"] == [0, 5]
    assert not is_image_hdu(hdu)
    pixels = fits.PrimaryHDU(np.ones((2, 5), np.float32))
    pixels.writeto(tmp_path / "pixels.fits")
    assert is_image_hdu(hdu_of(tmp_path / "pixels.fits"))
    fits.PrimaryHDU(np.ones((1, 1), np.float32)).writeto(tmp_path / "one.fits")
    assert is_image_hdu(hdu_of(tmp_path / "one.fits"))  # one pixel is still an image


def test_an_extension_without_extver_is_version_1(tmp_path: Path) -> None:
    path = tmp_path / "extver.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(np.ones((2, 2), np.float32), name="SCI")]
    ).writeto(path)
    assert "EXTVER" not in fits.getheader(path, 1)
    hdu = hdu_of(path, 1)
    assert (hdu["name"], hdu["ver"]) == ("SCI", 1)
    # An EXTVER that is not an integer counts as absent.
    with fits.open(path, mode="update") as hdul:
        hdul[1].header["EXTVER"] = "two"
    assert hdu_of(path, 1)["ver"] == 1


def test_all_999_compression_parameters_are_read(tmp_path: Path) -> None:
    """ZNAMEn/ZVALn go up to n = 999 (an 8-character keyword): every one is kept, and no
    more."""
    data = np.arange(16 * 8, dtype=np.int32).reshape(8, 16)
    made = tmp_path / "made.fits"
    fits.CompImageHDU(data, compression_type="RICE_1").writeto(made)
    with fits.open(made, disable_image_compression=True) as hdul:
        header = hdul[1].header
        existing = sum(1 for k in header if k.startswith("ZNAME"))
        for i in range(existing + 1, 1000):
            header[f"ZNAME{i}"] = f"P{i}"
            header[f"ZVAL{i}"] = i
        # Not a FITS keyword (9 characters): a HIERARCH card is no 1000th parameter.
        header["HIERARCH ZNAME1000"] = "P1000"
        header["HIERARCH ZVAL1000"] = 1000
        path = tmp_path / "many.fits"
        hdul.writeto(path)
    settings = hdu_of(path, 1)["zsettings"]
    assert len(settings) == 999
    assert settings["P999"] == 999


# -- more edges (second mutation pass) -------------------------------------------------------


def _minimal(xtension: str | None = None, **cards: Any) -> fits.Header:
    """A header without data: a primary one, or an extension of type ``xtension``."""
    first = [("SIMPLE", True)] if xtension is None else [("XTENSION", xtension)]
    header = fits.Header([*first, ("BITPIX", 8), ("NAXIS", 0)])
    if xtension is not None:
        header["PCOUNT"] = 0
        header["GCOUNT"] = 1
    for key, value in cards.items():
        header[key] = value
    return header


@pytest.mark.parametrize(
    ("tail", "trailing"), [(b"junk" * 25, 100), (b"\0" * 100, None), (b" " * 2880, None)]
)
def test_bytes_after_the_last_hdu_are_counted_unless_padding(
    tmp_path: Path, tail: bytes, trailing: int | None
) -> None:
    path = tmp_path / "tail.fits"
    fits.PrimaryHDU(np.ones((3, 3), np.float32)).writeto(path)
    path.write_bytes(path.read_bytes() + tail)
    index = index_fits(path)
    assert index.get("trailing_bytes") == trailing
    assert len(index["hdus"]) == 1


def test_an_extension_of_an_unknown_type_keeps_its_type(tmp_path: Path) -> None:
    path = tmp_path / "foreign.fits"
    path.write_bytes(_file_of(_minimal(EXTEND=True), _minimal("FOREIGN")))
    assert hdu_of(path, 1)["kind"] == "foreign"


def test_an_hdu_is_found_by_name_and_version(tmp_path: Path) -> None:
    path = tmp_path / "versions.fits"
    sci = [fits.ImageHDU(np.full((2, 2), v, np.float32), name="SCI", ver=v) for v in (1, 2)]
    fits.HDUList([fits.PrimaryHDU(), *sci]).writeto(path)
    index = index_fits(path)
    found = find_hdu(index, "sci", ver=2)
    assert found is not None
    assert found["index"] == 2
    assert find_hdu(index, "SCI", ver=1)["index"] == 1  # type: ignore[index]
    assert find_hdu(index, "SCI", ver=3) is None


@pytest.mark.parametrize(("extver", "ver"), [(2, 2), (True, 1)])
def test_extver_is_an_integer_not_a_logical(tmp_path: Path, extver: Any, ver: int) -> None:
    path = tmp_path / "extver.fits"
    path.write_bytes(_file_of(_minimal(EXTEND=True), _minimal("IMAGE", EXTNAME="A", EXTVER=extver)))
    assert hdu_of(path, 1)["ver"] == ver


def test_field_counts_are_bounded_by_999(tmp_path: Path) -> None:
    """TFIELDS (like NAXIS and ZNAXIS) numbers keywords of at most three digits."""
    forms = {f"TFORM{i}": "1B" for i in range(1, 1000)}
    table = _minimal("BINTABLE", NAXIS=2, NAXIS1=999, NAXIS2=0, TFIELDS=999, **forms)
    path = tmp_path / "999.fits"
    path.write_bytes(_file_of(_minimal(EXTEND=True), table))
    assert len(hdu_of(path, 1)["columns"]) == 999
    table["TFIELDS"] = 1000
    path.write_bytes(_file_of(_minimal(EXTEND=True), table))
    with pytest.raises(CorruptFileError, match="TFIELDS = 1000 is out of range"):
        index_fits(path)
    path.write_bytes(_file_of(_minimal(NAXIS=-1)))
    with pytest.raises(CorruptFileError, match="NAXIS = -1 is out of range"):
        index_fits(path)


def test_groups_need_at_least_one_axis(tmp_path: Path) -> None:
    """GROUPS = T with NAXIS = 0 is a plain (empty) primary; with NAXIS = 1 and NAXIS1 = 0
    it is random groups of parameters only: |BITPIX|/8 * GCOUNT * (PCOUNT + 1) bytes."""
    path = tmp_path / "groups.fits"
    path.write_bytes(_file_of(_minimal(GROUPS=True)))
    assert hdu_of(path)["kind"] == "primary"
    header = _minimal(GROUPS=True, NAXIS=1, NAXIS1=0, PCOUNT=3, GCOUNT=2)
    header["BITPIX"] = -32
    data = np.arange(8, dtype=">f4").tobytes()
    path.write_bytes(_file_of(header) + data + b"\0" * (2880 - len(data)))
    hdu = hdu_of(path)
    assert hdu["kind"] == "groups"
    assert hdu["data_size"] == 4 * 2 * (3 + 1)


def _compressed(tmp_path: Path, rows: int, tile_rows: int) -> Path:
    data = np.arange(40 * rows, dtype=np.int32).reshape(rows, 40)
    path = tmp_path / "tiles.fits"
    fits.CompImageHDU(data, compression_type="RICE_1", tile_shape=(tile_rows, 40)).writeto(path)
    return path


def _patch_card(path: Path, keyword: bytes, value: int) -> None:
    raw = path.read_bytes()
    card = raw.index(keyword.ljust(8) + b"=")
    new = (keyword.ljust(8) + b"= " + str(value).encode().rjust(20)).ljust(80)
    path.write_bytes(raw[:card] + new + raw[card + 80 :])


def test_a_compressed_image_needs_a_table_row_per_tile(tmp_path: Path) -> None:
    path = _compressed(tmp_path, rows=30, tile_rows=4)  # ceil(30 / 4) = 8 tiles
    assert fits.getheader(path, 1, disable_image_compression=True)["NAXIS2"] == 8
    assert hdu_of(path, 1)["tile_shape"] == [4, 40]
    _patch_card(path, b"NAXIS2", 7)
    with pytest.raises(CorruptFileError, match="needs 8 tile rows but the table has NAXIS2 = 7"):
        index_fits(path)


def test_a_compressed_image_with_an_empty_axis_is_indexed(tmp_path: Path) -> None:
    path = _compressed(tmp_path, rows=30, tile_rows=1)
    _patch_card(path, b"ZNAXIS2", 0)
    assert hdu_of(path, 1)["shape"] == [0, 40]


def test_a_compressed_axis_of_minus_one_is_refused(tmp_path: Path) -> None:
    path = _compressed(tmp_path, rows=30, tile_rows=1)
    _patch_card(path, b"ZNAXIS2", -1)
    with pytest.raises(CorruptFileError, match="axis lengths must not be negative"):
        index_fits(path)


def _with_compression_cards(tmp_path: Path, **cards: Any) -> Path:
    made = _compressed(tmp_path, rows=8, tile_rows=1)
    path = tmp_path / "cards.fits"
    with fits.open(made, disable_image_compression=True) as hdul:
        for key, value in cards.items():
            hdul[1].header[key] = value
        hdul.writeto(path)
    return path


def test_compression_parameters_stop_at_the_first_gap(tmp_path: Path) -> None:
    path = _with_compression_cards(tmp_path, ZNAME5="AFTERGAP", ZVAL5=5)
    settings = hdu_of(path, 1)["zsettings"]
    assert "AFTERGAP" not in settings
    assert set(settings) == {"BLOCKSIZE", "BYTEPIX"}


def test_a_compression_parameter_that_is_no_number_or_string_is_refused(tmp_path: Path) -> None:
    path = _with_compression_cards(tmp_path, ZVAL1=complex(1, 2))
    with pytest.raises(CorruptFileError, match="ZVAL1 .* is not a number or a string"):
        index_fits(path)


def test_an_unscaled_image_records_no_scaling(tmp_path: Path) -> None:
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.ones((2, 2), np.int16)).writeto(path)
    hdu = hdu_of(path)
    assert not {"bscale", "bzero", "blank"} & set(hdu)


def test_scaling_never_writes_into_the_array_it_is_given() -> None:
    stored = np.ones((2, 2), dtype=np.float32)  # native order: no copy needed to read it
    scaled = apply_scaling(stored, {"bscale": 2.0, "bzero": 1.0})
    np.testing.assert_array_equal(scaled, np.full((2, 2), 3.0))
    np.testing.assert_array_equal(stored, np.ones((2, 2)))


def test_a_zero_bscale_gives_bzero_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "zero-scale.fits"
    fits.PrimaryHDU(np.arange(6, dtype=np.int16).reshape(2, 3)).writeto(path)
    with fits.open(path, mode="update", do_not_scale_image_data=True) as hdul:
        hdul[0].header["BSCALE"] = 0.0
        hdul[0].header["BZERO"] = 5.0
    assert_same_pixels(decoded(path), fits.getdata(path))
    np.testing.assert_array_equal(decoded(path), np.full((2, 3), 5.0))


def test_a_recorded_fits_index_is_used_and_anything_else_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "img.fits"
    fits.PrimaryHDU(np.ones((2, 2), np.float32)).writeto(path)
    source = LocalFileSource(path)
    try:
        recorded = {"format": "fits", "hdus": [{"index": 0, "marker": True}]}
        assert ensure_index(source, recorded) is recorded
        for other in (None, {}, {"format": "parquet", "hdus": [{}]}, {"format": "fits"}):
            rebuilt = ensure_index(source, other)
            assert rebuilt["hdus"][0]["shape"] == [2, 2]
    finally:
        source.close()


@pytest.mark.parametrize(
    ("tform", "width", "element"),
    [("1PJ(5)", 8, "J"), ("PE(3)", 8, "E"), ("1QD(2)", 16, "D"), ("0PB", 0, "B")],
)
def test_heap_descriptors_have_their_widths(tform: str, width: int, element: str) -> None:
    layout = parse_tform(tform)
    assert (layout["width"], layout["element"]) == (width, element)


def test_a_repeated_heap_descriptor_is_refused() -> None:
    with pytest.raises(ValueError, match="allows 0 or 1"):
        parse_tform("2PJ(3)")


def test_a_real_variable_length_column_reads_its_element_type() -> None:
    columns = hdu_of(fits_test_file("theap-gap.fits"), 1)["columns"]
    assert [(c["tform"], c.get("element")) for c in columns] == [("J", None), ("PJ(5)", "J")]


def test_at_most_10000_hdus_are_indexed(tmp_path: Path) -> None:
    """The index holds up to MAX_HDUS (10,000) HDUs; a file with more is refused, not read
    header after header without end."""
    primary = _file_of(_minimal(EXTEND=True))
    extension = _file_of(_minimal("IMAGE"))
    path = tmp_path / "many.fits"
    path.write_bytes(primary + extension * 9_999)
    assert len(index_fits(path)["hdus"]) == 10_000
    path.write_bytes(primary + extension * 10_000)
    with pytest.raises(CorruptFileError, match="more than 10000 HDUs"):
        index_fits(path)


def test_an_extension_of_no_groups_has_no_data(tmp_path: Path) -> None:
    """GCOUNT = 0 is allowed (no groups: no data), only a negative count is refused."""
    image = _minimal("IMAGE", NAXIS=1, NAXIS1=10)
    image["GCOUNT"] = 0
    path = tmp_path / "gcount0.fits"
    path.write_bytes(_file_of(_minimal(EXTEND=True), image))
    assert hdu_of(path, 1)["data_size"] == 0
    for key in ("GCOUNT", "PCOUNT"):
        negative = image.copy()
        negative["GCOUNT"] = 1
        negative[key] = -1
        path.write_bytes(_file_of(_minimal(EXTEND=True), negative))
        with pytest.raises(CorruptFileError, match="must not be negative"):
            index_fits(path)


def test_a_3d_compressed_image_needs_a_table_row_per_tile(tmp_path: Path) -> None:
    data = np.arange(2 * 30 * 40, dtype=np.int32).reshape(2, 30, 40)
    path = tmp_path / "cube.fits"
    hdu = fits.CompImageHDU(data, compression_type="RICE_1", tile_shape=(1, 4, 40))
    hdu.writeto(path)
    # 2 planes of ceil(30 / 4) = 8 tiles each.
    assert fits.getheader(path, 1, disable_image_compression=True)["NAXIS2"] == 16
    assert hdu_of(path, 1)["tile_shape"] == [1, 4, 40]
    _patch_card(path, b"NAXIS2", 15)
    with pytest.raises(CorruptFileError, match="needs 16 tile rows but the table has NAXIS2 = 15"):
        index_fits(path)


@pytest.mark.parametrize(("bits", "width"), [(1, 1), (8, 1), (9, 2), (16, 2), (17, 3), (64, 8)])
def test_bit_columns_take_whole_bytes(bits: int, width: int) -> None:
    assert parse_tform(f"{bits}X")["width"] == width  # FITS: ceil(n / 8) bytes


def test_blank_is_for_integer_pixels_only(tmp_path: Path) -> None:
    """A BLANK card on floating-point data means nothing (NaN is the blank): astropy
    ignores it, and so does the decoding."""
    path = tmp_path / "float-blank.fits"
    fits.PrimaryHDU(np.array([[1.0, 0.5], [3.0, 1.0]], dtype=np.float32)).writeto(path)
    with warnings.catch_warnings():
        # astropy says so: "The 'BLANK' keyword is only applicable to integer data".
        warnings.simplefilter("ignore", VerifyWarning)
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["BLANK"] = 1
            hdul[0].header["BSCALE"] = 2.0
        expected = fits.getdata(path)
    assert not np.isnan(expected).any()
    ours = decoded(path)
    assert ours.dtype == np.float32  # (astropy keeps the file's byte order here)
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(ours, [[2.0, 1.0], [6.0, 2.0]])  # stored or scaled, 1 stays


def test_a_wcs_in_the_legacy_cd00i00j_form_is_read_as_its_cdi_j_twin() -> None:
    """Old headers write the CD matrix as CD001001 ...; WCSLIB reads them when told to relax
    the standard, and the WCS must then be the one of the same matrix written CD1_1 ..."""
    common = fits.Header(
        [
            ("NAXIS", 2),
            ("NAXIS1", 100),
            ("NAXIS2", 100),
            ("CTYPE1", "RA---TAN"),
            ("CTYPE2", "DEC--TAN"),
            ("CRVAL1", 10.0),
            ("CRVAL2", 20.0),
            ("CRPIX1", 50.0),
            ("CRPIX2", 50.0),
        ]
    )
    matrix = {(1, 1): -0.001, (2, 2): 0.001, (1, 2): 0.0005, (2, 1): 0.0}
    legacy, modern = common.copy(), common.copy()
    for (i, j), value in matrix.items():
        legacy[f"CD{i:03d}{j:03d}"] = value
        modern[f"CD{i}_{j}"] = value
    ours = wcs_from_header(legacy)
    assert ours is not None
    expected = WCS(modern).pixel_to_world_values(0, 0)
    np.testing.assert_allclose(ours.pixel_to_world_values(0, 0), expected)


def test_an_empty_first_axis_without_groups_is_not_random_groups(tmp_path: Path) -> None:
    """NAXIS1 = 0 marks random groups only with GROUPS = T (FITS 4.0 §6): without the card
    the HDU holds no data, and the next HDU starts right after its header."""
    path = tmp_path / "empty-axis.fits"
    fits.HDUList(
        [fits.PrimaryHDU(np.zeros((10, 0), dtype=np.int16)), fits.ImageHDU(np.arange(6.0))]
    ).writeto(path)
    with fits.open(path) as hdus:
        assert "GROUPS" not in hdus[0].header
        assert hdus[0].header["NAXIS1"] == 0
        offsets = [h.fileinfo()["datLoc"] for h in hdus]
    index = index_fits(path)["hdus"]
    assert [h["data_offset"] for h in index] == offsets
    assert [h["data_size"] for h in index] == [0, 48]
    assert np.array_equal(decoded(path, 1), np.arange(6.0))


@pytest.mark.parametrize("value", [True, 1.5, "junk"])
def test_a_zblank_that_is_not_an_integer_is_not_taken(tmp_path: Path, value: object) -> None:
    """ZBLANK is an integer (FITS 4.0 §10.3.5); a logical, real or string one is ignored,
    not carried into the index as the value that marks null pixels."""
    packed = tmp_path / "packed.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.arange(64, dtype=np.int32))]).writeto(
        packed
    )
    edited = tmp_path / "edited.fits"
    with fits.open(packed, disable_image_compression=True) as hdus:
        hdus[1].header["ZBLANK"] = value
        hdus.writeto(edited)
    hdu = hdu_of(edited, 1)
    assert hdu["shape"] == [64]  # read as the compressed image it is
    assert "zblank" not in hdu


def test_a_column_format_that_does_not_parse_is_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad-tform.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "J", array=[1])])]
    ).writeto(path)
    raw = path.read_bytes()
    card = raw.index(b"TFORM1  = ")
    bad = b"TFORM1  = '1Y      '".ljust(80)
    path.write_bytes(raw[:card] + bad + raw[card + 80 :])
    with pytest.raises(CorruptFileError, match="TFORM|column"):
        index_fits(path)


def test_a_wcs_that_wcslib_refuses_is_dropped_not_raised() -> None:
    header = fits.Header()
    header.update(NAXIS=2, NAXIS1=4, NAXIS2=4, CRVAL1=1.0, CRVAL2=2.0)
    header.update(CTYPE1="RA---TAN", CTYPE2="RA---TAN")  # two longitudes: WCSLIB refuses
    assert wcs_from_header(header, "test.fits") is None


def _with_header_blocks(path: Path, blocks: int) -> Path:
    """Two image HDUs with data; the primary header fills ``blocks`` blocks."""
    primary = fits.PrimaryHDU(np.zeros((100, 100), dtype=np.float32))
    for i in range(blocks * 36 - 16):  # 36 cards a block; room for the required ones and END
        primary.header[f"KEY{i}"] = i
    fits.HDUList([primary, fits.ImageHDU(np.ones((60, 60), dtype=np.int16))]).writeto(path)
    with fits.open(path) as hdus:
        assert hdus[0].fileinfo()["datLoc"] == blocks * BLOCK
    return path


@pytest.mark.parametrize(("blocks", "requests"), [(1, 2), (4, 2), (5, 3)])
def test_indexing_through_a_source_costs_one_read_per_header_of_up_to_four_blocks(
    tmp_path: Path, blocks: int, requests: int
) -> None:
    """A file stored without an index is indexed through its byte source (remote, for a
    client): a header of up to four blocks costs one request of at most four blocks."""
    path = _with_header_blocks(tmp_path / f"{blocks}.fits", blocks)
    source = LocalFileSource(path)
    assert index_fits_source(source) == index_fits(path)
    assert source.requests == requests
    assert source.bytes_read <= requests * SOURCE_READ


def test_a_real_file_is_indexed_through_a_source_with_a_read_per_hdu() -> None:
    path = hst_wfpc2()
    source = LocalFileSource(path)
    hdus = index_fits_source(source)["hdus"]
    assert index_fits(path)["hdus"] == hdus
    assert all(h["header_size"] <= SOURCE_READ for h in hdus)
    assert source.requests == len(hdus)
