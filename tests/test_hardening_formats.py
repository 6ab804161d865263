"""Hostile and damaged files are refused with CorruptFileError, promptly, when stored.

Regression tests of the adversary's findings against the formatters: a FITS header cut at a
block boundary (the scan used to spin forever), FITS values that made the HDU walk go
backwards or loop a billion times, ``.npy`` headers numpy only rejects at load time, YAML
"billion laughs" and recursive aliases, JSON/YAML nested deeper than the stack, and the heap
descriptor width of ``Q`` columns. Files are real ones shipped with astropy (or written by
astropy), cut or edited byte by byte; expected offsets come from astropy's own reading.
"""

from __future__ import annotations

import datetime
import json
import math
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from conftest import TextFormatter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from real_data import fits_test_file, hst_wfpc2, tile_compressed

from butler import Butler
from butler.errors import CorruptFileError, StorageClassError
from butler.formatters.base import Formatter, validate_file
from butler.formatters.fits_image import FitsImageFormatter
from butler.formatters.fits_index import BLOCK, index_fits
from butler.formatters.fits_table import FitsTableFormatter
from butler.formatters.npy import NpyFormatter
from butler.formatters.parquet import META_KEY, ParquetFormatter
from butler.formatters.structured import JsonFormatter, YamlFormatter
from butler.io.source import ByteSource, LocalFileSource

HSC = {"instrument": "HSC"}
CARD = 80


def hdu_locations(path: Path) -> list[tuple[int, int]]:
    """``(header offset, data offset)`` of every HDU, as astropy reads the file."""
    with fits.open(path) as hdus:
        return [(h.fileinfo()["hdrLoc"], h.fileinfo()["datLoc"]) for h in hdus]


def set_card(raw: bytearray, keyword: str, value: str, occurrence: int = 0) -> None:
    """Replace the value of the ``occurrence``-th ``keyword`` card of ``raw`` in place."""
    starts = [i for i in range(0, len(raw), CARD) if raw[i : i + 8] == keyword.encode().ljust(8)]
    assert len(starts) > occurrence, f"no card {keyword} #{occurrence}"
    card = f"{keyword:<8}= {value:>20}".ljust(CARD).encode("ascii")
    raw[starts[occurrence] : starts[occurrence] + CARD] = card


def edited(path: Path, out: Path, *cards: tuple[str, str, int]) -> Path:
    raw = bytearray(path.read_bytes())
    for keyword, value, occurrence in cards:
        set_card(raw, keyword, value, occurrence)
    out.write_bytes(raw)
    return out


# ---------------------------------------------------------------------------------------
# FITS: truncated headers, bounded headers, values that would make the walk never end


def truncation_cases() -> list[tuple[int, int, int]]:
    """``(hdu, header offset, cut)``: cuts inside every header of HST WFPC2 test0.fits, at
    each block boundary in it (the old endless loop) and in the middle of a block."""
    cases = []
    for number, (header, data) in enumerate(hdu_locations(hst_wfpc2())):
        cases += [(number, header, cut) for cut in range(header + BLOCK, data, BLOCK)]
        cases.append((number, header, header + 1000))
    return cases


def test_truncation_cases_cover_block_boundaries_of_every_header() -> None:
    cases = truncation_cases()
    assert {hdu for hdu, _, _ in cases} == {0, 1, 2, 3, 4}
    assert sum(1 for _, header, cut in cases if (cut - header) % BLOCK == 0) == 3 + 4 * 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("hdu", "header", "cut"), truncation_cases())
def test_header_cut_short_is_truncated_not_an_endless_scan(
    tmp_path: Path, hdu: int, header: int, cut: int
) -> None:
    path = tmp_path / "test0.fits"
    path.write_bytes(hst_wfpc2().read_bytes()[:cut])
    with pytest.raises(CorruptFileError) as err:
        index_fits(path)
    assert str(err.value) == (
        f"{path}: HDU {hdu} (header at byte {header}) has no END card before the end of the "
        f"file at byte {cut} (the file has {cut} bytes); the file is truncated"
    )
    with pytest.raises(CorruptFileError, match="the file is truncated"):
        validate_file(FitsImageFormatter(), path)


@pytest.mark.timeout(60)
def test_file_cut_between_hdus_is_a_shorter_valid_file(tmp_path: Path) -> None:
    locations = hdu_locations(hst_wfpc2())
    path = tmp_path / "first_two.fits"
    path.write_bytes(hst_wfpc2().read_bytes()[: locations[2][0]])
    assert [h["header_offset"] for h in index_fits(path)["hdus"]] == [
        header for header, _ in locations[:2]
    ]


@pytest.mark.timeout(60)
def test_header_without_end_card_is_refused_after_a_bounded_read(tmp_path: Path) -> None:
    # 6 MB of well-formed cards and no END: a header no real file has.
    path = tmp_path / "endless.fits"
    cards = [f"{'SIMPLE':<8}= {'T':>20}".ljust(CARD)]
    cards += [f"COMMENT card {i}".ljust(CARD) for i in range(2100 * 36 - 1)]
    path.write_bytes("".join(cards).encode("ascii"))
    with pytest.raises(CorruptFileError) as err:
        index_fits(path)
    assert str(err.value) == (
        f"{path}: HDU 0 (header at byte 0) has no END card in its first 5760000 bytes "
        "(72000 cards, the most this reader accepts); the file is damaged or not FITS"
    )


@pytest.mark.timeout(60)
def test_negative_pcount_cannot_walk_back_to_an_earlier_header(tmp_path: Path) -> None:
    # HDU 1 of test0.fits is 40x40 int16: PCOUNT = -5760 would give a data size of
    # 2 * (1600 - 5760) bytes, and the "next" header would be HDU 1 again, forever.
    path = edited(hst_wfpc2(), tmp_path / "back.fits", ("PCOUNT", "-5760", 0))
    with pytest.raises(CorruptFileError) as err:
        index_fits(path)
    assert str(err.value) == (
        f"{path}: HDU 1 (header at byte 11520): PCOUNT = -5760 and GCOUNT = 1 must not be negative"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("keyword", "hdu", "message"),
    [
        ("TFIELDS", 1, "TFIELDS = 999999999 is out of range (0 to 999)"),
        ("ZNAXIS", 1, "ZNAXIS = 999999999 is out of range (0 to 999)"),
        ("NAXIS", 0, "NAXIS = 999999999 is out of range (0 to 999)"),
    ],
)
def test_keyword_counts_are_bounded(tmp_path: Path, keyword: str, hdu: int, message: str) -> None:
    # comp.fits: HDU 1 is a RICE-compressed image stored as a BINTABLE (TFIELDS, ZNAXIS).
    path = edited(tile_compressed(), tmp_path / "many.fits", (keyword, "999999999", 0))
    header = hdu_locations(tile_compressed())[hdu][0]
    with pytest.raises(CorruptFileError) as err:
        index_fits(path)
    assert str(err.value) == f"{path}: HDU {hdu} (header at byte {header}): {message}"


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("ZTILE2", "0", "tile sizes must be at least 1"),
        ("ZNAXIS2", "-300", "axis lengths must not be negative"),
        ("ZNAXIS2", "301", "needs 301 tile rows but the table has NAXIS2 = 300"),
    ],
)
def test_compressed_tile_grid_is_checked_when_stored(
    tmp_path: Path, keyword: str, value: str, message: str
) -> None:
    # comp.fits: 440x300 pixels in 300 tiles of one row (ZTILE1 = 440, ZTILE2 = 1). A zero
    # tile size used to be recorded and failed every read with ZeroDivisionError.
    path = edited(tile_compressed(), tmp_path / "tiles.fits", (keyword, value, 0))
    with pytest.raises(CorruptFileError) as err:
        index_fits(path)
    assert str(err.value).startswith(f"{path}: HDU 1 (header at byte 2880): compressed image")
    assert message in str(err.value)


@pytest.mark.parametrize("naxis", ["0", "1"])
def test_ascii_table_must_have_two_axes(tmp_path: Path, naxis: str) -> None:
    # ascii.fits: HDU 1 is an ASCII TABLE; its axes used to be unpacked without a check
    # (ValueError: not enough values to unpack).
    path = edited(fits_test_file("ascii.fits"), tmp_path / "ascii.fits", ("NAXIS", naxis, 1))
    header = hdu_locations(fits_test_file("ascii.fits"))[1][0]
    with pytest.raises(CorruptFileError) as err:
        index_fits(path)
    assert str(err.value) == (
        f"{path}: HDU 1 (header at byte {header}): an ASCII TABLE must have NAXIS = 2, not {naxis}"
    )


@pytest.mark.timeout(60)
def test_unparsable_required_value_is_corrupt_not_a_verify_error(tmp_path: Path) -> None:
    # astropy parses card values lazily and raises VerifyError for this one.
    path = edited(hst_wfpc2(), tmp_path / "bad.fits", ("NAXIS1", "4x0", 0))
    with pytest.raises(CorruptFileError) as err:
        index_fits(path)
    assert str(err.value) == (
        f"{path}: HDU 1 (header at byte 11520): required keyword NAXIS1 is missing or not an "
        "integer"
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["(1.0, 2.0)", "'two'"])
def test_scaling_must_be_a_real_number(tmp_path: Path, value: str) -> None:
    # A complex BSCALE used to go into the index, which then could not be stored as JSON.
    source = tmp_path / "scaled.fits"
    hdu = fits.PrimaryHDU(np.arange(12, dtype=np.int16).reshape(3, 4))
    hdu.header["BSCALE"] = 2.0
    hdu.writeto(source)
    path = edited(source, tmp_path / "complex.fits", ("BSCALE", value, 0))
    with pytest.raises(CorruptFileError) as err:
        index_fits(path)
    assert f"{path}: HDU 0 (header at byte 0): BSCALE = " in str(err.value)
    assert str(err.value).endswith("is not a finite real number")


# ---------------------------------------------------------------------------------------
# FITS: variable-length array (heap) descriptors: P = 2 x int32, Q = 2 x int64


def vla_table(path: Path) -> dict[str, list[np.ndarray[Any, Any]]]:
    """A binary table written by astropy with fixed, P and Q columns; its VLA rows."""
    rows = {
        "p": [np.arange(n, dtype=np.int32) * 7 for n in (2, 0, 4, 1)],
        "q": [np.arange(n, dtype=np.float64) / 3 for n in (0, 3, 1, 5)],
    }
    columns = fits.ColDefs(
        [
            fits.Column(name="id", format="J", array=np.arange(4, dtype=np.int32)),
            fits.Column(name="p", format="PJ()", array=np.array(rows["p"], dtype=object)),
            fits.Column(name="q", format="QD()", array=np.array(rows["q"], dtype=object)),
            fits.Column(name="flag", format="L", array=np.array([True, False, True, True])),
        ]
    )
    fits.BinTableHDU.from_columns(columns).writeto(path)
    return rows


def check_descriptor_columns(path: Path) -> list[dict[str, Any]]:
    """Assert the index's column layout of HDU 1 against astropy's, and decode every heap
    descriptor with the standard's integer width; returns the index's columns."""
    table = index_fits(path)["hdus"][1]
    raw = path.read_bytes()
    with fits.open(path) as hdus:
        hdu = hdus[1]
        # astropy's record layout of the on-disk row: descriptor columns are (2,) int32 for
        # P and (2,) int64 for Q, at the standard's byte offsets.
        fields = hdu.columns.dtype.fields
        assert fields is not None
        expected = {name: (offset, dtype.itemsize) for name, (dtype, offset) in fields.items()}
        assert {c["name"]: (c["offset"], c["width"]) for c in table["columns"]} == expected
        descriptors = [c for c in table["columns"] if c["code"] in "PQ"]
        assert descriptors, "the table has variable-length columns"
        assert hdu.data is not None
        for column in descriptors:
            stored = ">i4" if column["code"] == "P" else ">i8"
            rows = hdu.data.field(column["name"])
            assert len(rows) > 0
            for row, value in enumerate(rows):
                start = table["data_offset"] + row * table["naxis1"] + column["offset"]
                count, heap = np.frombuffer(raw[start : start + column["width"]], dtype=stored)
                assert count == len(value)
                element = np.dtype(value.dtype).newbyteorder(">")
                at = table["data_offset"] + table["theap"] + int(heap)
                heap_values = np.frombuffer(raw[at : at + count * element.itemsize], element)
                np.testing.assert_array_equal(heap_values, value)
    return table["columns"]  # type: ignore[no-any-return]


def test_p_and_q_heap_descriptors_of_an_astropy_table(tmp_path: Path) -> None:
    path = tmp_path / "vla.fits"
    vla_table(path)
    columns = check_descriptor_columns(path)
    assert [(c["code"], c["width"]) for c in columns] == [("J", 4), ("P", 8), ("Q", 16), ("L", 1)]


def test_p_heap_descriptors_of_a_shipped_table() -> None:
    columns = check_descriptor_columns(fits_test_file("variable_length_table.fits"))
    assert {c["code"] for c in columns} >= {"P"}


# ---------------------------------------------------------------------------------------
# FITS: fuzzing the offset index with real files, mutated


def _check_index(index: dict[str, Any], size: int) -> None:
    json.dumps(index, allow_nan=False)  # the registry stores it as JSON
    offsets = [h["header_offset"] for h in index["hdus"]]
    assert offsets == sorted(set(offsets))
    for hdu in index["hdus"]:
        assert hdu["header_size"] % BLOCK == 0
        assert hdu["data_size"] >= 0
        assert hdu["data_offset"] + hdu["data_size"] <= size


def assert_indexes_or_is_corrupt(path: Path) -> None:
    """The file indexes into a consistent index, or is refused with a message naming it."""
    try:
        index = index_fits(path)
    except CorruptFileError as exc:
        message = str(exc)
    else:
        _check_index(index, path.stat().st_size)
        return
    assert message.startswith(f"{path}: ")


FUZZ_FILES = [
    hst_wfpc2(),
    tile_compressed(),
    fits_test_file("variable_length_table.fits"),
    fits_test_file("theap-gap.fits"),
    fits_test_file("random_groups.fits"),
    fits_test_file("ascii.fits"),
    fits_test_file("tdim.fits"),
]
KEYWORDS = [
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
    "TFIELDS", "TFORM1", "TFORM2", "THEAP", "ZNAXIS", "ZNAXIS1", "ZTILE1", "ZBITPIX",
    "ZCMPTYPE", "ZVAL1", "BSCALE", "BZERO", "BLANK", "GROUPS", "EXTNAME", "END",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(["0", "1", "2", "-1", "8", "-32"]),
    st.integers(-3, 1000).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["T", "F", "'1PE(3)'", "'2QD(9)'", "'0P'", "'9X'", "'RICE_1'", "1E400"]),
    st.sampled_from(["(1, 2)", "'abc'", "", "nan", "'", "1.5", "-2880", "4x0"]),
)
MUTATION = st.one_of(
    st.tuples(st.just("cut"), st.integers(0, 100_000)),
    st.tuples(st.just("card"), st.sampled_from(KEYWORDS), VALUES, st.integers(0, 3)),
    st.tuples(st.just("byte"), st.integers(0, 100_000), st.integers(0, 255)),
    st.tuples(st.just("no_end"), st.integers(0, 3)),
)


def mutate(raw: bytearray, mutation: tuple[Any, ...]) -> bytearray:
    kind = mutation[0]
    if kind == "cut":
        return raw[: mutation[1] % (len(raw) + 1)]
    if kind == "byte":
        if raw:
            raw[mutation[1] % len(raw)] = mutation[2]
        return raw
    keyword = mutation[1] if kind == "card" else "END"
    starts = [i for i in range(0, len(raw), CARD) if raw[i : i + 8] == keyword.encode().ljust(8)]
    if starts:
        at = starts[mutation[-1] % len(starts)]
        card = f"{keyword:<8}= {mutation[2]:>20}" if kind == "card" else "COMMENT"
        raw[at : at + CARD] = card.ljust(CARD)[:CARD].encode("ascii")
    return raw


@pytest.mark.timeout(300)
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.integers(0, len(FUZZ_FILES) - 1), mutations=st.lists(MUTATION, min_size=1, max_size=4)
)
def test_mutated_real_fits_indexes_or_is_corrupt(
    tmp_path: Path, which: int, mutations: list[tuple[Any, ...]]
) -> None:
    raw = bytearray(FUZZ_FILES[which].read_bytes())
    for mutation in mutations:
        raw = mutate(raw, mutation)
    path = tmp_path / "fuzzed.fits"
    path.write_bytes(raw)
    assert_indexes_or_is_corrupt(path)


@pytest.mark.timeout(300)
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=12_000), fits_like=st.booleans())
def test_arbitrary_bytes_index_or_are_corrupt(tmp_path: Path, body: bytes, fits_like: bool) -> None:
    raw = (f"{'SIMPLE':<8}= {'T':>20}".ljust(CARD).encode() if fits_like else b"") + body
    path = tmp_path / "bytes.fits"
    path.write_bytes(raw)
    assert_indexes_or_is_corrupt(path)


def test_fuzz_inputs_are_real_multi_hdu_files() -> None:
    counts = [len(index_fits(p)["hdus"]) for p in FUZZ_FILES]
    assert len(counts) == 7
    assert all(n >= 2 for n in counts[:4])


# ---------------------------------------------------------------------------------------
# .npy: headers numpy accepts but no array (or only a pickle) can have


def npy_file(path: Path, header: str, data: bytes) -> Path:
    """A version 1.0 .npy file with a hand-written header dict (see numpy's format spec)."""
    text = header.encode("latin-1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data)
    return path


BAD_NPY = [
    (
        "{'descr': '<f8', 'fortran_order': False, 'shape': (-2, 3), }",
        b"",
        "declares shape (-2, 3) with a negative axis length; the file is damaged",
    ),
    (
        "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }",
        b"\0" * 16,
        "declares dtype object, which holds Python objects: such data is a pickle",
    ),
    (
        "{'descr': '<i2', 'fortran_order': False, 'shape': (0, 10**30), }".replace(
            "10**30", str(10**30)
        ),
        b"",
        f"declares shape (0, {10**30}) of int16, too large for any array",
    ),
    (
        # numpy re-tokenises a header it cannot parse and raises tokenize.TokenError.
        "{'descr': '<f8', 'fortran_order': False, 'shape': ((3,), }",
        b"",
        "not a readable .npy file: ('EOF in multi-line statement', (2, 0))",
    ),
    (
        "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }",
        b"\1\0\2\0" + b"#!junk",
        "array data ends at byte 132 but the file has 138 bytes; the file holds something "
        "after the array",
    ),
]


@pytest.mark.parametrize(("header", "data", "message"), BAD_NPY)
def test_invalid_npy_is_refused_when_stored(
    butler: Butler, tmp_path: Path, header: str, data: bytes, message: str
) -> None:
    path = npy_file(tmp_path / "bad.npy", header, data)
    with pytest.raises(CorruptFileError) as err:
        NpyFormatter().index(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    with pytest.raises(CorruptFileError):
        butler.ingest(path, "flux", {**HSC, "visit": 100, "detector": 0})
    assert butler.query_datasets("flux") == []


def test_valid_hand_written_npy_is_accepted(tmp_path: Path) -> None:
    path = npy_file(
        tmp_path / "ok.npy",
        "{'descr': '<i2', 'fortran_order': False, 'shape': (2,), }",
        b"\1\0\2\0",
    )
    assert NpyFormatter().index(path) == {
        "format": "npy",
        "data_offset": 128,
        "dtype": "<i2",
        "shape": [2],
        "fortran_order": False,
    }
    np.testing.assert_array_equal(np.load(path), [1, 2])


# ---------------------------------------------------------------------------------------
# JSON / YAML: aliases that expand, recursion, nesting deeper than the stack


def billion_laughs() -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_when_stored(butler: Butler, tmp_path: Path) -> None:
    text = billion_laughs()
    assert len(text) < 600
    assert text.count("*") == 8 * 9
    path = tmp_path / "lol.yaml"
    path.write_text(text)
    with pytest.raises(CorruptFileError) as err:
        YamlFormatter().index(path)
    assert "aliases expand the document by more than 100000 nodes" in str(err.value)
    # 9 + 81 + ... lists: refused at the alias that crosses the limit (line 6, "f").
    assert "line 6" in str(err.value)
    with pytest.raises(CorruptFileError, match="aliases expand the document"):
        butler.ingest(path, "config", HSC)
    assert butler.query_datasets("config") == []


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("a: &x [1, *x]\n")
    with pytest.raises(CorruptFileError, match=r"alias \*x refers to a collection that contains"):
        YamlFormatter().index(path)


def test_modest_aliases_and_merge_keys_still_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {x: 1, y: [1, 2]}\nc:\n  <<: *b\n  z: 3\nd: *b\n")
    assert YamlFormatter().index(path) == {"format": "yaml"}
    assert yaml.safe_load(path.read_text())["c"] == {"x": 1, "y": [1, 2], "z": 3}


def test_yaml_is_written_without_aliases(tmp_path: Path) -> None:
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    path = tmp_path / "shared.yaml"
    YamlFormatter().write({"start": when, "end": when, "a": [1], "b": [1]}, path)
    text = path.read_text()
    assert "&" not in text
    assert "*" not in text
    assert yaml.safe_load(text) == {"start": when, "end": when, "a": [1], "b": [1]}


def nested(depth: int, json_style: bool = True) -> str:
    inner = "[" * depth + "]" * depth
    return ('{"a": ' if json_style else "a: ") + inner + ("}" if json_style else "\n")


@pytest.mark.timeout(60)
def test_json_nested_200000_deep_is_corrupt_not_recursion_error(
    butler: Butler, tmp_path: Path
) -> None:
    path = tmp_path / "deep.json"
    path.write_text(nested(200_000))
    message = "nest more than 100 levels deep"
    with pytest.raises(CorruptFileError, match=message):
        JsonFormatter().index(path)
    with pytest.raises(CorruptFileError, match=message):
        butler.ingest(path, "summary", {**HSC, "visit": 100, "detector": 0})
    assert butler.query_datasets("summary") == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        nested(200_000, json_style=False),
        "a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(2_000)),
    ],
    ids=["flow", "block"],
)
def test_yaml_nested_deep_is_corrupt_not_recursion_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match="nest more than 100 levels deep"):
        YamlFormatter().index(path)


@pytest.mark.parametrize("formatter", [JsonFormatter(), YamlFormatter()])
def test_nesting_limit_is_exactly_100_levels(tmp_path: Path, formatter: Formatter) -> None:
    ok = tmp_path / "ok"
    ok.write_text(nested(99))  # 99 lists in a mapping: 100 levels (JSON is YAML too)
    assert formatter.index(ok) == {"format": formatter.name}
    deep = tmp_path / "deep"
    deep.write_text(nested(100))
    with pytest.raises(CorruptFileError, match="nest more than 100 levels deep"):
        formatter.index(deep)


def test_put_of_a_too_deep_or_self_containing_dict_is_refused(butler: Butler) -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(150):
        inner["k"] = {}
        inner = inner["k"]
    loop: dict[str, Any] = {}
    loop["self"] = loop
    for value in (deep, loop):
        with pytest.raises(StorageClassError, match="nest more than 100 levels deep"):
            butler.put(value, "summary", HSC, visit=100, detector=0)
    assert butler.query_datasets("summary") == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            b'{"columns": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "JSON lists and mappings nest more than 100 levels deep",
        ),
        (b"[1, 2]", "holds a list, not a JSON mapping"),
        (b'{"columns": {"a": 3}}', "has 'columns' that is not a mapping of column names"),
    ],
)
def test_parquet_table_metadata_is_checked_when_stored(
    tmp_path: Path, document: bytes, message: str
) -> None:
    # Written by pyarrow itself with a hostile butler metadata document: the footer is
    # valid, so only reading the document finds the problem (it used to fail at get()).
    path = tmp_path / "meta.parq"
    pq.write_table(pa.table({"a": [1, 2]}, metadata={META_KEY: document}), path)
    with pytest.raises(CorruptFileError) as err:
        ParquetFormatter().index(path)
    assert str(err.value).startswith(f"{path}: table metadata 'butler.table'")
    assert message in str(err.value)


def test_parquet_metadata_nesting_counts_from_the_document_root(tmp_path: Path) -> None:
    # Column meta sits 3 levels down in the document ({"columns": {name: {"meta": ...}}}),
    # so 97 levels of it make a 100-level document, which is stored and read back.
    def chain(levels: int) -> dict[str, Any]:
        root: dict[str, Any] = {}
        inner = root
        for _ in range(levels - 1):
            inner["k"] = {}
            inner = inner["k"]
        return root

    table = Table({"a": [1, 2]})
    table["a"].meta = chain(97)
    ParquetFormatter().write(table, tmp_path / "ok.parq")
    index = ParquetFormatter().index(tmp_path / "ok.parq")
    back = ParquetFormatter().read(LocalFileSource(tmp_path / "ok.parq"), index)
    assert back["a"].meta == chain(97)
    table["a"].meta = chain(98)
    with pytest.raises(StorageClassError, match="nest more than 100 levels deep"):
        ParquetFormatter().write(table, tmp_path / "deep.parq")
    assert not (tmp_path / "deep.parq").exists()


# ---------------------------------------------------------------------------------------
# The validation entry point a server calls on an upload


class _StrictFormatter(TextFormatter):
    """A plugin-like formatter whose parser raises ValueError on bad input."""

    name: ClassVar[str] = "strict-test"

    def index(self, path: Path) -> dict[str, Any]:
        value = int(path.read_text())
        return {"format": self.name, "value": value}

    def read(self, source: ByteSource, index: Any, **kwargs: Any) -> Any:
        return int(source.read(0, source.size))


def test_validate_file_returns_the_index_or_a_corrupt_file_error(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("42")
    assert validate_file(_StrictFormatter(), good) == {"format": "strict-test", "value": 42}
    bad = tmp_path / "bad.txt"
    bad.write_text("forty-two")
    with pytest.raises(CorruptFileError) as err:
        validate_file(_StrictFormatter(), bad)
    assert str(err.value) == (
        f"{bad}: not a valid Dict file for formatter 'strict-test': ValueError: invalid "
        "literal for int() with base 10: 'forty-two'"
    )
    assert isinstance(err.value.__cause__, ValueError)
    # Machine failures are not the file's fault: they propagate as they are.
    with pytest.raises(FileNotFoundError):
        validate_file(_StrictFormatter(), tmp_path / "missing.txt")


def test_validate_file_of_builtin_formatters(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    index = validate_file(NpyFormatter(), path)
    assert index["shape"] == [2, 3]
    assert index["dtype"] == "<f4"
    assert math.prod(index["shape"]) * 4 + index["data_offset"] == path.stat().st_size
    deep = tmp_path / "deep.json"
    deep.write_text(nested(5000))
    with pytest.raises(CorruptFileError, match="nest more than 100 levels deep"):
        validate_file(JsonFormatter(), deep)


# ---------------------------------------------------------------------------------------
# What a whole read decodes to, judged from the index (a server's full read of an upload
# depends on it: a small compressed file may stand for gigabytes)


def _in_memory(image: Any) -> int:
    return sum(np.asarray(plane).nbytes for plane in (image.data, image.mask, image.variance))


@pytest.mark.parametrize("path", [tile_compressed(), hst_wfpc2()], ids=["comp", "wfpc2"])
def test_decoded_bytes_of_real_images_is_what_a_read_holds(path: Path) -> None:
    formatter = FitsImageFormatter()
    index = formatter.index(path)
    image = formatter.read(LocalFileSource(path), index)
    assert formatter.decoded_bytes(index) == _in_memory(image)


def test_decoded_bytes_of_a_compressed_image_is_its_full_shape(tmp_path: Path) -> None:
    path = tmp_path / "zeros.fits"
    zeros = fits.CompImageHDU(
        np.zeros((1024, 2048), np.float32), compression_type="GZIP_1", tile_shape=(256, 2048)
    )
    fits.HDUList([fits.PrimaryHDU(), zeros]).writeto(path)
    index = FitsImageFormatter().index(path)
    assert path.stat().st_size < 100_000
    assert FitsImageFormatter().decoded_bytes(index) == 1024 * 2048 * 12
    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)  # no image: the read says what is wrong, not this
    assert FitsImageFormatter().decoded_bytes(FitsImageFormatter().index(empty)) is None


def test_decoded_bytes_of_parquet_counts_values_not_file_bytes(tmp_path: Path) -> None:
    rows = 200_000
    path = tmp_path / "constant.parq"
    constant = Table({"flux": np.zeros(rows), "flag": np.ones(rows, np.int32)})
    ParquetFormatter().write(constant, path)
    index = ParquetFormatter().index(path)
    assert path.stat().st_size < 20_000  # run lengths and zstd: almost nothing on disk
    assert ParquetFormatter().decoded_bytes(index) == rows * (8 + 4)
    back = ParquetFormatter().read(LocalFileSource(path), index)
    assert sum(back[name].nbytes for name in back.colnames) == rows * (8 + 4)

    # One long string among short ones widens the whole numpy column it becomes.
    names = tmp_path / "names.parq"
    labels = ["a"] * 999 + ["x" * 5000]
    ParquetFormatter().write(Table({"name": labels}), names)
    names_index = ParquetFormatter().index(names)
    read_back = ParquetFormatter().read(LocalFileSource(names), names_index)
    assert read_back["name"].nbytes == 1000 * 4 * 5000
    bound = ParquetFormatter().decoded_bytes(names_index)
    assert bound is not None
    assert bound >= read_back["name"].nbytes


def test_uncompressed_formats_decode_to_about_their_size(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(6))
    assert NpyFormatter().decoded_bytes(NpyFormatter().index(path)) is None
    (tmp_path / "a.json").write_text('{"a": 1}')
    assert JsonFormatter().decoded_bytes(JsonFormatter().index(tmp_path / "a.json")) is None


def _table_in_memory(table: Table) -> int:
    return sum(
        sum(np.asarray(cell).nbytes for cell in table[name])
        if table[name].dtype == object  # variable-length arrays: one array per row
        else table[name].nbytes
        for name in table.colnames
    )


@pytest.mark.parametrize(
    "name", ["tb.fits", "variable_length_table.fits", "btable.fits", "table.fits"]
)
def test_decoded_bytes_of_real_tables_bounds_what_a_read_holds(name: str) -> None:
    path = fits_test_file(name)
    formatter = FitsTableFormatter()
    index = formatter.index(path)
    bound = formatter.decoded_bytes(index)
    assert bound is not None
    assert bound >= _table_in_memory(formatter.read(LocalFileSource(path), index))


def test_decoded_bytes_of_a_table_whose_rows_share_one_heap_array(tmp_path: Path) -> None:
    """Every row's descriptor pointing at the same 40 KB of heap: 200 rows read as 8 MB
    from a 50 KB file (the same with 2,000 rows and 4 MB took a read 17 s and 7.7 GB)."""
    rows, count = 200, 10_000
    path = tmp_path / "shared.fits"
    column = fits.Column(
        name="v", format="PJ()", array=np.array([np.ones(1, np.int32)] * rows, dtype=object)
    )
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([column])]).writeto(path)
    with fits.open(path) as hdus:
        header, data_at = hdus[1].header, hdus[1]._data_offset
    raw = bytearray(path.read_bytes()[:data_at])
    old_pcount = f"PCOUNT  = {header['PCOUNT']:>20}".encode()
    heap = np.arange(count, dtype=">i4").tobytes()
    raw = bytearray(raw.replace(old_pcount, f"PCOUNT  = {len(heap):>20}".encode()))
    raw += struct.pack(">ii", count, 0) * rows  # (elements, heap offset): one array for all
    raw += heap
    raw += bytes(-len(raw) % 2880)
    path.write_bytes(bytes(raw))

    formatter = FitsTableFormatter()
    index = formatter.index(path)
    table = formatter.read(LocalFileSource(path), index)
    assert _table_in_memory(table) == rows * count * 4
    assert list(table["v"][rows - 1][:3]) == [0, 1, 2]
    bound = formatter.decoded_bytes(index)
    assert bound is not None
    assert bound >= rows * count * 4
    assert path.stat().st_size < 64 * 1024
