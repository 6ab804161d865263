"""Round trips and partial reads of every built-in formatter, with bytes counted."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.table import MaskedColumn, QTable, Table
from astropy.time import Time
from astropy.wcs import WCS
from real_data import hst_wfpc2

from butler.errors import CorruptFileError, StorageClassError, UnsupportedParameterError
from butler.formatters.fits_image import CompressedFitsImageFormatter, FitsImageFormatter
from butler.formatters.fits_table import FitsTableFormatter
from butler.formatters.npy import NpyFormatter
from butler.formatters.parquet import ParquetFormatter
from butler.formatters.registry import FormatterRegistry
from butler.formatters.structured import JsonFormatter, YamlFormatter
from butler.image import Image
from butler.io.source import LocalFileSource


def test_registry_resolves_every_builtin_formatter() -> None:
    registry = FormatterRegistry()
    expected = {
        "fits-image": ("Image", ".fits"),
        "fits-image-compressed": ("Image", ".fits"),
        "parquet": ("Table", ".parq"),
        "fits-table": ("Table", ".fits"),
        "json": ("Dict", ".json"),
        "yaml": ("Dict", ".yaml"),
        "npy": ("Array", ".npy"),
    }
    for name, (storage_class, extension) in expected.items():
        formatter = registry.formatter(name)
        assert formatter.name == name
        assert (formatter.storage_class, formatter.extension) == (storage_class, extension)
    # CCDData given to the Image storage class is converted.
    ccd = CCDData(np.ones((2, 2)), unit="adu")
    assert isinstance(registry.storage_class("Image").validate(ccd), Image)


# ---------------------------------------------------------------------------------------
# Images


def full_image() -> Image:
    rng = np.random.default_rng(11)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crpix = [30.0, 20.0]
    wcs.wcs.crval = [10.0, -5.0]
    wcs.wcs.cd = [[-5e-5, 0], [0, 5e-5]]
    from astropy.wcs import Sip

    a = np.zeros((3, 3))
    a[2, 0] = 1e-7
    b = np.zeros((3, 3))
    b[0, 2] = -2e-7
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    header = fits.Header()
    header["EXPTIME"] = (30.0, "seconds")
    header["OBSID"] = "HSC-1228"
    header["HIERARCH LSST BUTLER NOTE"] = "long keyword"
    header.add_history("made by a test")
    mask = rng.integers(0, 1 << 9, size=(40, 60)).astype(np.int32)
    planes = {"BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5}
    planes |= {"DETECTED_NEGATIVE": 6, "SUSPECT": 7, "NO_DATA": 8, "STREAK": 12}
    return Image(
        rng.normal(size=(40, 60)).astype(np.float32),
        variance=rng.random((40, 60)).astype(np.float32),
        mask=mask,
        mask_planes=planes,
        wcs=wcs,
        unit="electron",
        header=header,
    )


def cards(header: fits.Header) -> list[tuple[str, Any, str]]:
    return [(c.keyword, c.value, c.comment) for c in header.cards]


@pytest.mark.parametrize("formatter", [FitsImageFormatter(), CompressedFitsImageFormatter()])
def test_image_round_trip_is_exact(tmp_path: Path, formatter: FitsImageFormatter) -> None:
    image = full_image()
    path = tmp_path / f"img{formatter.extension}"
    formatter.write(image, path)
    index = formatter.index(path)
    json.dumps(index)  # the index goes into the registry as JSON
    back = formatter.read(LocalFileSource(path), index)
    assert isinstance(back, Image)
    assert back.data.dtype == np.float32
    assert np.array_equal(back.data, image.data)
    assert np.array_equal(back.variance, image.variance)
    assert np.array_equal(back.mask, image.mask)
    assert back.mask_planes == image.mask_planes
    assert back.unit == u.electron
    assert cards(back.header) == cards(image.header)
    assert back.wcs.to_header(relax=True) == image.wcs.to_header(relax=True)
    assert back.wcs.sip is not None
    # Components alone.
    for component, expected in [
        ("image", image.data),
        ("variance", image.variance),
        ("mask", image.mask),
    ]:
        value = formatter.read(LocalFileSource(path), index, component=component)
        assert np.array_equal(value, expected)
    metadata = formatter.read(LocalFileSource(path), index, component="metadata")
    assert cards(metadata) == cards(image.header)


def test_image_layout_is_lsst_like(tmp_path: Path) -> None:
    path = tmp_path / "img.fits"
    FitsImageFormatter().write(full_image(), path)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        assert hdul[0].data is None
        assert hdul[0].header["OBSID"] == "HSC-1228"
        assert hdul["IMAGE"].header["BUNIT"] == "electron"
        assert hdul["IMAGE"].header["CTYPE1"] == "RA---TAN-SIP"
        assert hdul["MASK"].data.dtype == np.dtype(">i4")
        assert hdul["MASK"].header["MP_STREAK"] == 12
        assert hdul["MASK"].header["MP_DETECTED_NEGATIVE"] == 6
        assert hdul["VARIANCE"].data.dtype == np.dtype(">f4")


def test_ccddata_is_stored_as_image(tmp_path: Path) -> None:
    ccd = CCDData(
        np.arange(12, dtype=np.float64).reshape(3, 4),
        unit="adu",
        uncertainty=StdDevUncertainty(np.full((3, 4), 0.5)),
        mask=np.eye(3, 4, dtype=bool),
    )
    path = tmp_path / "ccd.fits"
    FitsImageFormatter().write(ccd, path)
    back = FitsImageFormatter().read(LocalFileSource(path), FitsImageFormatter().index(path))
    assert back.data.dtype == np.float64  # precision kept
    assert np.array_equal(back.data, ccd.data)
    assert np.all(back.variance == 0.25)
    assert np.array_equal(back.mask_of("BAD"), ccd.mask)
    as_ccd = back.to_ccddata()
    assert np.array_equal(as_ccd.mask, ccd.mask)


def test_image_write_refuses_bad_plane_names(tmp_path: Path) -> None:
    image = Image(np.zeros((2, 2)), mask_planes={"bad pixels": 0})
    with pytest.raises(StorageClassError, match="cannot be stored as a FITS keyword"):
        FitsImageFormatter().write(image, tmp_path / "x.fits")


def test_image_read_refuses_unknown_component(tmp_path: Path) -> None:
    path = hst_wfpc2()
    with pytest.raises(UnsupportedParameterError, match="no component 'psf'"):
        FitsImageFormatter().read(LocalFileSource(path), {}, component="psf")
    with pytest.raises(UnsupportedParameterError, match="does not support parameters"):
        FitsImageFormatter().read(LocalFileSource(path), {}, parameters={"columns": ["a"]})


# ---------------------------------------------------------------------------------------
# Tables


def catalog(rows: int = 1000) -> Table:
    rng = np.random.default_rng(2)
    table = Table()
    table["id"] = np.arange(rows, dtype=np.int64)
    table["ra"] = rng.random(rows) * 360
    table["ra"].unit = u.deg
    table["ra"].description = "right ascension (ICRS)"
    table["flux"] = rng.random(rows).astype(np.float32)
    table["flux"].unit = u.nJy
    table["flux"].format = ".3f"
    table["band"] = np.resize(np.array(["g", "r", "i", "z"]), rows)
    table["flag"] = rng.random(rows) > 0.5
    table["shape"] = rng.random((rows, 2, 2))
    table["nchild"] = MaskedColumn(rng.integers(0, 5, rows), mask=rng.random(rows) < 0.1)
    table.meta["survey"] = "LSST"
    table.meta["visits"] = [1228, 1230]
    return table


def assert_tables_equal(a: Table, b: Table) -> None:
    assert a.colnames == b.colnames
    for name in a.colnames:
        ca, cb = a[name], b[name]
        assert ca.dtype == cb.dtype, name
        assert ca.unit == cb.unit, name
        assert ca.description == cb.description, name
        if isinstance(ca, MaskedColumn):
            assert isinstance(cb, MaskedColumn), name
            assert np.array_equal(ca.mask, cb.mask), name
            assert np.array_equal(ca.filled(0), cb.filled(0)), name
        else:
            assert np.array_equal(np.asarray(ca), np.asarray(cb)), name


def test_parquet_round_trip(tmp_path: Path) -> None:
    table = catalog()
    path = tmp_path / "cat.parq"
    fmt = ParquetFormatter()
    fmt.write(table, path)
    index = fmt.index(path)
    assert index["format"] == "parquet"
    assert index["num_rows"] == 1000
    assert index["columns"] == table.colnames
    assert index["footer_offset"] + index["footer_size"] + 8 == path.stat().st_size
    source = LocalFileSource(path)
    back = fmt.read(source, index)
    assert source.requests == 1
    assert_tables_equal(table, back)
    assert back.meta == table.meta
    assert back["flux"].format == ".3f"
    # No pickle anywhere: the astropy metadata is plain JSON in the Arrow schema.
    meta = pq.read_schema(path).metadata
    assert json.loads(meta[b"butler.table"])["columns"]["ra"]["unit"] == "deg"


def test_parquet_column_read_fetches_only_footer_and_chunks(tmp_path: Path) -> None:
    table = catalog(200_000)
    path = tmp_path / "cat.parq"
    fmt = ParquetFormatter()
    fmt.write(table, path)
    index = fmt.index(path)
    metadata = pq.read_metadata(path)
    for name in ("flux", "shape", "band"):
        leaves = [
            i
            for i in range(metadata.num_columns)
            if metadata.schema.column(i).path.split(".")[0] == name
        ]
        chunks = sum(
            metadata.row_group(rg).column(i).total_compressed_size
            for rg in range(metadata.num_row_groups)
            for i in leaves
        )
        source = LocalFileSource(path)
        part = fmt.read(source, index, parameters={"columns": [name]})
        assert part.colnames == [name]
        assert np.array_equal(np.asarray(part[name]), np.asarray(table[name]))
        assert part[name].unit == table[name].unit
        assert source.requests == 2  # the footer, then this column's chunks
        assert source.bytes_read == index["footer_size"] + 8 + chunks
    # The narrow column is a small part of the file.
    assert chunks < path.stat().st_size / 10


def test_parquet_errors(tmp_path: Path) -> None:
    path = tmp_path / "cat.parq"
    fmt = ParquetFormatter()
    fmt.write(catalog(10), path)
    with pytest.raises(UnsupportedParameterError, match="available columns: id, ra, flux"):
        fmt.read(LocalFileSource(path), fmt.index(path), parameters={"columns": ["dec"]})
    with_time = Table({"t": Time([59000.0], format="mjd")})
    with pytest.raises(StorageClassError, match=r"convert it to plain columns .*fits-table"):
        fmt.write(with_time, tmp_path / "t.parq")
    broken = tmp_path / "broken.parq"
    broken.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="not a Parquet file"):
        fmt.index(broken)


def test_parquet_qtable_keeps_quantities(tmp_path: Path) -> None:
    table = QTable({"flux": [1.0, 2.0] * u.nJy, "id": [1, 2]})
    path = tmp_path / "q.parq"
    ParquetFormatter().write(table, path)
    back = ParquetFormatter().read(LocalFileSource(path), ParquetFormatter().index(path))
    assert isinstance(back, QTable)
    assert isinstance(back["flux"], u.Quantity)
    assert back["flux"].unit == u.nJy


def test_fits_table_round_trip_and_columns(tmp_path: Path) -> None:
    table = catalog(50)
    table["t"] = Time(59000.0 + np.arange(50), format="mjd", scale="tai")
    path = tmp_path / "cat.fits"
    fmt = FitsTableFormatter()
    fmt.write(table, path)
    index = fmt.index(path)
    table_hdu = index["hdus"][1]
    assert table_hdu["kind"] == "bintable"
    source = LocalFileSource(path)
    back = fmt.read(source, index)
    assert source.requests == 1
    assert source.bytes_read == table_hdu["header_size"] + table_hdu["data_size"]
    assert_tables_equal(
        table[["id", "ra", "flux", "band", "flag", "shape", "nchild"]],
        back[["id", "ra", "flux", "band", "flag", "shape", "nchild"]],
    )
    assert back.meta["SURVEY"] == "LSST"
    assert back.meta["VISITS"] == [1228, 1230]  # one card per item
    assert np.all(back["t"] == table["t"])
    part = fmt.read(LocalFileSource(path), index, parameters={"columns": ["ra", "t"]})
    assert part.colnames == ["ra", "t"]
    assert part["ra"].unit == u.deg
    with pytest.raises(UnsupportedParameterError, match="available columns: id, ra"):
        fmt.read(LocalFileSource(path), index, parameters={"columns": ["nope"]})
    with pytest.raises(StorageClassError, match="nothing was written.*parquet"):
        fmt.write(Table({"a": [1]}, meta={"calib": {"zp": 27.0}}), tmp_path / "nested_meta.fits")
    assert not (tmp_path / "nested_meta.fits").exists()


# ---------------------------------------------------------------------------------------
# Dicts


@pytest.mark.parametrize("formatter", [JsonFormatter(), YamlFormatter()])
def test_structured_round_trip(tmp_path: Path, formatter: JsonFormatter) -> None:
    value = {
        "name": "calexp",
        "visit": 1228,
        "seeing": 0.71,
        "ok": True,
        "none": None,
        "nested": {"bands": ["g", "r"], "depth": {"r": 24.5}},
        "unicode": "Ångström",
    }
    path = tmp_path / f"d{formatter.extension}"
    formatter.write(value, path)
    index = formatter.index(path)
    assert index == {"format": formatter.name}
    assert formatter.read(LocalFileSource(path), index) == value


@pytest.mark.parametrize("formatter", [JsonFormatter(), YamlFormatter()])
def test_structured_converts_numpy(tmp_path: Path, formatter: JsonFormatter) -> None:
    value = {"n": np.int64(3), "x": np.float32(0.5), "b": np.bool_(True), "a": np.arange(3)}
    path = tmp_path / f"d{formatter.extension}"
    formatter.write(value, path)
    back = formatter.read(LocalFileSource(path), formatter.index(path))
    assert back == {"n": 3, "x": 0.5, "b": True, "a": [0, 1, 2]}
    assert type(back["n"]) is int


def test_structured_refusals(tmp_path: Path) -> None:
    with pytest.raises(StorageClassError, match=r"\$\['when'\]: datetime.datetime"):
        JsonFormatter().write({"when": datetime.datetime(2024, 1, 1)}, tmp_path / "a.json")
    with pytest.raises(StorageClassError, match="JSON object keys are strings"):
        JsonFormatter().write({1: "x"}, tmp_path / "b.json")
    with pytest.raises(StorageClassError, match=r"\$\['obj'\]: builtins.object"):
        YamlFormatter().write({"obj": object()}, tmp_path / "c.yaml")
    with pytest.raises(StorageClassError, match="use the 'Array' storage class"):
        JsonFormatter().write({"a": np.array([object()])}, tmp_path / "d.json")
    # YAML keeps dates natively.
    YamlFormatter().write({"day": datetime.date(2024, 1, 1)}, tmp_path / "e.yaml")
    assert yaml.safe_load((tmp_path / "e.yaml").read_text()) == {"day": datetime.date(2024, 1, 1)}


def test_yaml_never_constructs_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("x: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(CorruptFileError, match="not valid YAML"):
        YamlFormatter().index(path)
    with pytest.raises(CorruptFileError, match="not valid YAML"):
        YamlFormatter().read(LocalFileSource(path), {})
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": 1')
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        JsonFormatter().index(bad_json)
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="holds a list, not a JSON mapping"):
        JsonFormatter().index(listing)


# ---------------------------------------------------------------------------------------
# Arrays


def test_npy_round_trip_and_index(tmp_path: Path) -> None:
    array = np.arange(1000 * 7, dtype=">f8").reshape(1000, 7)
    path = tmp_path / "a.npy"
    fmt = NpyFormatter()
    fmt.write(array, path)
    index = fmt.index(path)
    assert index == {
        "format": "npy",
        "data_offset": 128,
        "dtype": ">f8",
        "shape": [1000, 7],
        "fortran_order": False,
    }
    back = fmt.read(LocalFileSource(path), index)
    assert back.dtype == array.dtype
    assert np.array_equal(back, array)


def test_npy_slice_reads_only_those_rows(tmp_path: Path) -> None:
    array = np.arange(1000 * 7, dtype=np.float32).reshape(1000, 7)
    path = tmp_path / "a.npy"
    fmt = NpyFormatter()
    fmt.write(array, path)
    index = fmt.index(path)
    source = LocalFileSource(path)
    part = fmt.read(source, index, parameters={"slice": slice(100, 150)})
    assert np.array_equal(part, array[100:150])
    assert part.flags.writeable
    assert source.requests == 1
    assert source.bytes_read == 50 * 7 * 4
    stepped = fmt.read(LocalFileSource(path), index, parameters={"slice": [10, 20, 3]})
    assert np.array_equal(stepped, array[10:20:3])
    # Without an index, the header is read first.
    no_index = fmt.read(LocalFileSource(path), {}, parameters={"slice": slice(-5, None)})
    assert np.array_equal(no_index, array[-5:])


def test_npy_structured_and_fortran(tmp_path: Path) -> None:
    structured = np.zeros(20, dtype=[("id", "<i8"), ("pos", "<f4", (3,)), ("name", "U5")])
    structured["id"] = np.arange(20)
    structured["name"] = "ab"
    path = tmp_path / "s.npy"
    fmt = NpyFormatter()
    fmt.write(structured, path)
    index = json.loads(json.dumps(fmt.index(path)))  # as stored in the registry
    part = fmt.read(LocalFileSource(path), index, parameters={"slice": slice(5, 8)})
    assert part.dtype == structured.dtype
    assert np.array_equal(part, structured[5:8])
    fortran = np.asfortranarray(np.arange(30.0).reshape(5, 6))
    fpath = tmp_path / "f.npy"
    fmt.write(fortran, fpath)
    fpart = fmt.read(LocalFileSource(fpath), fmt.index(fpath), parameters={"slice": slice(1, 3)})
    assert np.array_equal(fpart, fortran[1:3])


def test_npy_refuses_objects_and_truncation(tmp_path: Path) -> None:
    fmt = NpyFormatter()
    with pytest.raises(StorageClassError, match="never uses"):
        fmt.write(np.array([{"a": 1}], dtype=object), tmp_path / "o.npy")
    path = tmp_path / "a.npy"
    fmt.write(np.arange(100.0), path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CorruptFileError, match="truncated"):
        fmt.index(path)
    # A file holding pickled objects (written by someone else) is refused, not unpickled.
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptFileError, match="cannot load"):
        fmt.read(LocalFileSource(evil), {})
