"""The same sky position from two telescopes, side by side, through one butler call.

1. Ingests a *real* Digitized Sky Survey plate (UK 48-inch Schmidt, shipped in astropy's
   test data) and a DECam raw CCD of the same field with ``ingest_raws`` — the DECam file is
   synthetic (no installed package ships a DECam file of this field): the DSS pixels
   resampled onto a DECam CCD's pixel grid (0.263"/pixel, rotated, with a TPV distortion),
   in electrons with Poisson noise, written in DECam's raw layout and headers;
2. reads a 45-arcsecond sky cutout of each with the *same* call,
   ``butler.get("raw", ..., parameters={"sky": (ra, dec, 45 * u.arcsec)})``;
3. draws them side by side on their own WCS with a common RA/Dec grid and saves a PNG.

Run: ``python docs/examples/two_telescopes.py [--output DIR]`` (default: next to this
script). It rewrites ``two_telescopes.png`` there; the repository it builds goes to a
temporary directory.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from astropy import units as u  # noqa: E402
from astropy.coordinates import SkyCoord  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from butler import Butler, Image  # noqa: E402
from butler.direct_butler import DirectButler  # noqa: E402
from butler.ingest import FileOutcome, RawIngestOptions, ingest_raws  # noqa: E402
from butler.sample_data import astropy_file  # noqa: E402
from butler.sample_raws import tan_wcs  # noqa: E402

# Centre of the DSS plate cutout (near alpha Centauri).
DSS_GZ = "wcs/tests/data/dss.14.29.56-62.41.05.fits.gz"
SIZE = 45 * u.arcsec


def bilinear(
    image: npt.NDArray[np.floating], x: npt.NDArray[np.floating], y: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """``image`` sampled at pixel positions (x, y), bilinearly; NaN outside."""
    height, width = image.shape
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    xc, yc = np.clip(x, 0, width - 1.001), np.clip(y, 0, height - 1.001)
    x0, y0 = np.floor(xc).astype(int), np.floor(yc).astype(int)
    fx, fy = xc - x0, yc - y0
    value = (
        image[y0, x0] * (1 - fx) * (1 - fy)
        + image[y0, x0 + 1] * fx * (1 - fy)
        + image[y0 + 1, x0] * (1 - fx) * fy
        + image[y0 + 1, x0 + 1] * fx * fy
    )
    return np.where(inside, value, np.nan)


def decam_from_dss(plate_image: Image, out: Path, centre: SkyCoord) -> Path:
    """A DECam raw file (empty PRIMARY + one CCD extension) whose pixels are the DSS plate
    resampled onto a rotated DECam pixel grid with a small TPV distortion."""
    plate = np.asarray(plate_image.data, dtype=np.float64)
    plate_wcs = plate_image.wcs
    shape = (360, 320)
    wcs = tan_wcs(centre.ra.deg, centre.dec.deg, shape, 0.263, rotation_deg=25.0)
    header = wcs.to_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TPV", "DEC--TPV"
    for axis in (1, 2):
        header[f"PV{axis}_1"] = 1.0
        header[f"PV{axis}_4"] = 1.0
    decam_wcs = WCS(header)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    world = decam_wcs.pixel_to_world(xx, yy)
    px, py = plate_wcs.world_to_pixel(world)
    sky = bilinear(plate, np.asarray(px), np.asarray(py))
    # Photographic density to a DECam-like count level, then Poisson noise in electrons.
    level = np.nan_to_num(sky - np.nanpercentile(sky, 5), nan=0.0).clip(0) * 2.0 + 400.0
    electrons = np.random.default_rng(7).poisson(level).astype(np.float32)
    header.update(
        {
            "CCDNUM": 35,
            "DETPOS": "N4",
            "GAINA": 4.0,
            "GAINB": 4.0,
            "RDNOISEA": 6.0,
            "RDNOISEB": 6.0,
            "EXTNAME": "N4",
            "BUNIT": "adu",
        }
    )
    primary = fits.Header()
    for key, value in {
        "TELESCOP": "CTIO 4.0-m telescope",
        "INSTRUME": "DECam",
        "OBSID": "ct4m20190301t052233",
        "EXPNUM": 812345,
        "DATE-OBS": "2019-03-01T05:22:33.0",
        "MJD-OBS": 58543.2240,
        "EXPTIME": 30.0,
        "FILTER": "g DECam SDSS c0001 4720.0 1520.0",
        "OBSTYPE": "object",
        "OBJECT": "alpha Cen field",
        "TELRA": centre.ra.to_string(u.hour, sep=":"),
        "TELDEC": centre.dec.to_string(sep=":", alwayssign=True),
        "TELEQUIN": 2000.0,
        "RADESYS": "ICRS",
        "TIMESYS": "UTC",
        "OBS-LAT": -30.16606,
        "OBS-LONG": 70.81489,
        "OBS-ELEV": 2215.0,
        "ZD": 35.0,
        "HA": "00:00:00",
        "AZ": 180.0,
    }.items():
        primary[key] = value
    path = out / "c4d_190301_052233_ori.fits"
    fits.HDUList(
        [fits.PrimaryHDU(header=primary), fits.ImageHDU(electrons / 4.0, header=header)]
    ).writeto(path)
    return path


def report(outcomes: list[FileOutcome]) -> None:
    for outcome in outcomes:
        print(f"{outcome.status:>9} {outcome.path.name}: {outcome.message}")
        if outcome.status != "ingested":
            raise SystemExit(f"ingest of {outcome.path} did not work: {outcome.message}")


def show(ax: plt.Axes, image: Image, title: str) -> None:
    finite = image.data[np.isfinite(image.data)]
    low, high = np.percentile(finite, [2, 99.5])
    ax.imshow(image.data, origin="lower", cmap="gray_r", vmin=low, vmax=high)
    ax.coords.grid(color="tab:blue", alpha=0.4, linestyle="dotted")
    ax.coords[0].set_axislabel("RA")
    ax.coords[1].set_axislabel("Dec")
    ax.set_title(title, fontsize=9)


def main(output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raws = work / "raws"
        raws.mkdir()
        dss = raws / "dss.14.29.56-62.41.05.fits"
        with gzip.open(astropy_file(DSS_GZ), "rb") as src, dss.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        with Butler.create(work / "repo") as butler:
            assert isinstance(butler, DirectButler)
            report(ingest_raws(butler, [dss], RawIngestOptions()))
            # The plate as the butler serves it: pixels, variance, mask, WCS in one object.
            (ref,) = butler.query_datasets("raw", where="instrument = 'UK 48-inch Schmidt'")
            plate = butler.get(ref)
            centre = plate.wcs.pixel_to_world(50, 50)
            decam = decam_from_dss(plate, raws, centre)
            report(ingest_raws(butler, [decam], RawIngestOptions()))

        cutouts = {}
        with Butler(work / "repo") as butler:
            for instrument in ("UK 48-inch Schmidt", "DECam"):
                (ref,) = butler.query_datasets("raw", where=f"instrument = '{instrument}'")
                butler.io_stats.reset()
                # The one call that is the same for every telescope:
                cut = butler.get(ref, parameters={"sky": (centre.ra, centre.dec, SIZE)})
                known = np.isfinite(cut.variance)
                variance = f"{np.median(cut.variance[known]):.1f}" if known.any() else "unknown"
                print(
                    f"{instrument:>20}: {cut.shape[1]} x {cut.shape[0]} pixels, unit "
                    f"{cut.unit}, {butler.io_stats.bytes_read} bytes read, median variance "
                    f"{variance}"
                )
                cutouts[instrument] = cut

    figure = plt.figure(figsize=(9, 4.6))
    for n, (instrument, cut) in enumerate(cutouts.items(), start=1):
        ax = figure.add_subplot(1, 2, n, projection=cut.wcs)
        label = "real DSS plate" if n == 1 else "synthetic DECam raw (TPV WCS)"
        show(ax, cut, f"{instrument} — {label}\n{cut.shape[1]}x{cut.shape[0]} px")
        ax.plot(
            centre.ra.deg,
            centre.dec.deg,
            "+",
            color="tab:red",
            markersize=14,
            transform=ax.get_transform("icrs"),
        )
    figure.suptitle(
        f"butler.get('raw', ..., parameters={{'sky': (ra, dec, {SIZE})}}) "
        f"at RA {centre.ra.deg:.4f}, Dec {centre.dec.deg:.4f}",
        fontsize=10,
    )
    figure.tight_layout()
    path = output / "two_telescopes.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent)
    main(parser.parse_args().output)
