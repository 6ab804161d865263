"""A new data product (docs/examples/spectrum_product.py) written locally and read back
through ``butler serve``, proxyd and a mirror, with no change to any of them.

The example module is installed the way a user's package would be: copied into a plugin
directory with a tiny ``.dist-info`` declaring it under the ``butler.plugins`` entry-point
group, that directory put on ``sys.path`` here and on ``PYTHONPATH`` for the servers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import populate_dimensions
from proxies import Proxy, running
from servers import WRITE_TOKEN, ButlerServer

from butler import Butler, UnsupportedParameterError
from mirror.cli import main as mirror_main

EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "spectrum_product.py"
DATA_ID = {"instrument": "HSC", "visit": 101, "detector": 1}
ORIGIN = {
    "formatter": "spectrum-npz",
    "class": "spectrum_product:SpectrumFormatter",
    "distribution": "butler-spectrum",
}


def install_plugin(directory: Path) -> Path:
    """The example as an installed distribution ``butler-spectrum`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, directory / "spectrum_product.py")
    dist_info = directory / "butler_spectrum-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: butler-spectrum\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[butler.plugins]\nspectrum = spectrum_product\n")
    return directory


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = install_plugin(tmp_path_factory.mktemp("plugins"))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(directory))
        mp.setenv("PYTHONPATH", str(directory))  # for butler serve and proxyd children
        yield directory


def make_spectrum(n: int = 50) -> Any:
    from spectrum_product import Spectrum

    wavelength = np.linspace(400.0, 900.0, n) * u.nm
    flux = np.sin(np.linspace(0, 3, n)) * u.Unit("erg / (s cm2 nm)")
    return Spectrum(wavelength, flux)


def assert_same(got: Any, expected: Any) -> None:
    assert type(got).__name__ == "Spectrum"
    assert got.wavelength.unit == u.nm
    assert got.flux.unit == u.Unit("erg / (s cm2 nm)")
    np.testing.assert_array_equal(got.wavelength.value, expected.wavelength.value)
    np.testing.assert_array_equal(got.flux.value, expected.flux.value)


@pytest.fixture(scope="module")
def spectrum_repo(plugin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spectra") / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        butler.register_dataset_type("spectrum", ["visit", "detector"], "Spectrum")
    with Butler(root, run="run1") as butler:
        butler.put(make_spectrum(), "spectrum", DATA_ID)
    return root


@pytest.fixture(scope="module")
def spectrum_server(
    spectrum_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ButlerServer]:
    server = ButlerServer(spectrum_repo, tmp_path_factory.mktemp("spectrum-server")).start()
    yield server
    server.stop()


def test_local_round_trip_and_partial_reads(spectrum_repo: Path) -> None:
    expected = make_spectrum()
    with Butler(spectrum_repo, collections="run1") as butler:
        assert_same(butler.get("spectrum", DATA_ID), expected)
        flux = butler.get("spectrum.flux", DATA_ID)
        np.testing.assert_array_equal(flux.value, expected.flux.value)
        part = butler.get(
            "spectrum", DATA_ID, parameters={"wavelength_range": (500 * u.nm, 600 * u.nm)}
        )
        assert part.wavelength.min() >= 500 * u.nm
        assert part.wavelength.max() <= 600 * u.nm
        assert len(part.wavelength) == 10
        assert butler.get_file_info("spectrum", DATA_ID).index["plugin"] == ORIGIN


def test_unsupported_partial_reads_are_refused_clearly(spectrum_repo: Path) -> None:
    with Butler(spectrum_repo, collections="run1") as butler:
        with pytest.raises(UnsupportedParameterError) as component:
            butler.get("spectrum.metadata", DATA_ID)
        assert str(component.value) == (
            "Formatter 'spectrum-npz' has no component 'metadata' "
            "(supported components: flux, wavelength)."
        )
        with pytest.raises(
            UnsupportedParameterError, match="supported parameters: wavelength_range"
        ):
            butler.get("spectrum", DATA_ID, parameters={"bbox": (0, 0, 1, 1)})


def test_served_and_written_through_the_server(
    spectrum_server: ButlerServer, tmp_path: Path
) -> None:
    expected = make_spectrum()
    with Butler(
        spectrum_server.url, run="remote", token=WRITE_TOKEN, cache_dir=tmp_path / "cache"
    ) as butler:
        assert_same(butler.get("spectrum", DATA_ID, collections="run1"), expected)
        # The server indexes uploads with the formatter: it found the plugin too.
        other = make_spectrum(20)
        ref = butler.put(other, "spectrum", DATA_ID)
        assert_same(butler.get(ref), other)
        assert butler.get_file_info(ref).index["plugin"] == ORIGIN


def test_read_through_proxyd(spectrum_server: ButlerServer, tmp_path: Path) -> None:
    expected = make_spectrum()
    with running(Proxy({"repo": spectrum_server.url}, tmp_path / "proxy")) as proxy:
        url = proxy.url + "repo/"
        with Butler(url, collections="run1", cache_dir=tmp_path / "cache") as butler:
            assert_same(butler.get("spectrum", DATA_ID), expected)
            wavelength = butler.get("spectrum.wavelength", DATA_ID)
            np.testing.assert_array_equal(wavelength.value, expected.wavelength.value)
        assert proxy.metric_sum("proxyd_requests_total") > 0


def test_mirrored_then_read_offline(spectrum_server: ButlerServer, tmp_path: Path) -> None:
    dest = tmp_path / "mirror"
    result = CliRunner().invoke(
        mirror_main,
        [
            "pull",
            spectrum_server.url,
            "--dest",
            str(dest),
            "--dataset-type",
            "spectrum",
            "--collections",
            "run1",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    with Butler(dest, collections="run1") as butler:
        assert_same(butler.get("spectrum", DATA_ID), make_spectrum())
        assert butler.get_file_info("spectrum", DATA_ID).index["plugin"] == ORIGIN


def read_in_subprocess(repo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        "from butler import Butler, FormatterNotFoundError\n"
        "try:\n"
        f"    s = Butler({str(repo)!r}, collections='run1').get('spectrum', {DATA_ID!r})\n"
        "    print('read', len(s.flux), s.flux.unit)\n"
        "except FormatterNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    clean = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    return subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_missing_plugin_is_named(spectrum_repo: Path) -> None:
    out = read_in_subprocess(spectrum_repo).stdout
    assert "No formatter 'spectrum-npz' is installed" in out
    assert "plugin spectrum_product:SpectrumFormatter (distribution 'butler-spectrum')" in out
    assert "Install 'butler-spectrum'" in out


def test_plugin_module_named_in_the_environment(spectrum_repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "just-the-module"
    bare.mkdir()
    shutil.copy(EXAMPLE, bare / "spectrum_product.py")
    out = read_in_subprocess(
        spectrum_repo, PYTHONPATH=str(bare), BUTLER_PLUGINS="spectrum_product"
    ).stdout
    assert out.strip() == "read 50 erg / (nm s cm2)"


def test_the_docs_page_shows_the_example_file() -> None:
    page = (EXAMPLE.parents[1] / "adding-a-data-product.md").read_text()
    marker = "<!-- example: docs/examples/spectrum_product.py -->\n```python\n"
    shown = page.split(marker, 1)[1].split("```\n", 1)[0]
    assert shown == EXAMPLE.read_text()
