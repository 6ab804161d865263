"""The end-to-end tour (``butler demo``): everything runs on embedded defaults.

Creates a sample repository, ingests real telescope images and a real catalog, queries them,
reads a cutout and the metadata only (printing the bytes each read cost), memory-maps one
HDU through the offset index, and shows that a transaction is all or nothing. Then it serves
the repository with ``butler serve`` on 127.0.0.1 and does the same through ``Butler(url)``,
including a remote transaction; puts ``proxyd`` in front of it; and pulls a query into an
offline mirror that it reads back with the server stopped.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.table import Table

from butler.butler import Butler
from butler.direct_butler import DirectButler
from butler.image import Box, Image
from butler.sample_data import load_image, real_catalog, real_images, synthetic_calexp
from butler.server.process import ServerProcess

Echo = Callable[[str], None]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def build_sample_repository(root: Path, echo: Echo) -> DirectButler:
    """Create ``root`` with real HST/DSS images, a synthetic LSST-like calexp and catalogs."""
    if root.exists():
        shutil.rmtree(root)
    butler = Butler.create(root, name="sample")
    echo(f"1. Created repository at {root}")
    samples = real_images()
    for instrument in sorted({s.instrument for s in samples} | {"LSSTCam"}):
        butler.insert_dimension_records("instrument", {"name": instrument})
    bands = {s.band for s in samples} | {"r", "i"}
    butler.insert_dimension_records("band", *({"name": b} for b in sorted(bands)))
    filters = {(s.instrument, s.physical_filter, s.band) for s in samples}
    filters |= {("LSSTCam", "r_57", "r"), ("LSSTCam", "i_39", "i")}
    butler.insert_dimension_records(
        "physical_filter",
        *({"instrument": i, "name": f, "band": b} for i, f, b in sorted(filters)),
    )
    for s in samples:
        butler.insert_dimension_records(
            "detector", {"instrument": s.instrument, "id": s.detector}, skip_existing=True
        )
        butler.insert_dimension_records(
            "visit",
            {"instrument": s.instrument, "id": s.visit, "physical_filter": s.physical_filter},
            skip_existing=True,
        )
    butler.insert_dimension_records(
        "detector", *({"instrument": "LSSTCam", "id": d} for d in range(4))
    )
    butler.insert_dimension_records("day_obs", {"instrument": "LSSTCam", "id": 20261127})
    butler.insert_dimension_records(
        "visit",
        *(
            {
                "instrument": "LSSTCam",
                "id": 2026112700001 + v,
                "physical_filter": f,
                "day_obs": 20261127,
                "exposure_time": 30.0,
                "target_name": "COSMOS",
            }
            for v, f in enumerate(["r_57", "i_39"])
        ),
    )
    butler.insert_dimension_records("skymap", {"name": "demo"})
    butler.insert_dimension_records("tract", {"skymap": "demo", "id": 0})
    butler.register_dataset_type("image", ["visit", "detector"], "Image")
    butler.register_dataset_type("calexp", ["visit", "detector"], "Image")
    butler.register_dataset_type(
        "calexp_compressed", ["visit", "detector"], "Image", formatter="fits-image-compressed"
    )
    butler.register_dataset_type("refcat", ["skymap", "tract"], "Table")
    butler.register_dataset_type("sources", ["visit", "detector"], "Table")
    butler.register_dataset_type("visit_summary", ["visit"], "Dict")

    with butler.transaction():
        for s in samples:
            image = load_image(s)
            butler.put(
                image,
                "image",
                instrument=s.instrument,
                visit=s.visit,
                detector=s.detector,
                run="sample/raw",
            )
            echo(
                f"   ingested {s.label:<30} {s.path.name:<32} {image.shape[1]}x{image.shape[0]} "
                f"-> image {{instrument: {s.instrument}, visit: {s.visit}, detector: {s.detector}}}"
            )
        catalog = real_catalog()
        butler.put(catalog, "refcat", skymap="demo", tract=0, run="sample/raw")
        echo(
            f"   ingested VizieR catalog J/A+A/511/A56 ({len(catalog)} stars, "
            f"{len(catalog.colnames)} columns) -> refcat {{skymap: demo, tract: 0}}"
        )
    calexp = synthetic_calexp()
    rng = np.random.default_rng(1)
    with butler.transaction():
        butler.put(
            calexp,
            "calexp",
            instrument="LSSTCam",
            visit=2026112700001,
            detector=0,
            run="sample/processed",
        )
        butler.put(
            calexp,
            "calexp_compressed",
            instrument="LSSTCam",
            visit=2026112700001,
            detector=0,
            run="sample/processed",
        )
        sources = Table(
            {
                "id": np.arange(200_000, dtype=np.int64),
                "ra": rng.uniform(149.9, 150.3, 200_000),
                "dec": rng.uniform(2.0, 2.4, 200_000),
                "psf_flux": rng.lognormal(8, 1, 200_000),
                "psf_flux_err": rng.lognormal(4, 0.3, 200_000),
                "extendedness": rng.uniform(0, 1, 200_000).astype(np.float32),
            }
        )
        butler.put(
            sources,
            "sources",
            instrument="LSSTCam",
            visit=2026112700001,
            detector=0,
            run="sample/processed",
        )
    echo(
        "   wrote a synthetic 2048x2048 LSSTCam-like calexp (plain and tile-compressed) and a "
        "200,000-row source table"
    )
    butler.set_collection_chain("sample", ["sample/processed", "sample/raw"])
    echo("   chained collection 'sample' searches sample/processed, then sample/raw")
    return butler


def run_demo(workdir: Path, echo: Echo = print) -> None:
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    butler = build_sample_repository(workdir / "repo", echo)
    butler.collections = ["sample"]

    echo("\n2. Queries")
    refs = butler.query_datasets("image", where="instrument IN ('WFPC2', 'DSS') AND detector <= 2")
    echo(
        f"   image where \"instrument IN ('WFPC2', 'DSS') AND detector <= 2\": {len(refs)} datasets"
    )
    for ref in refs:
        echo(f"     {dict(ref.data_id.required)} band={ref.data_id.get('band')} run={ref.run}")
    bands = butler.query_data_ids("visit", where="band = 'r'")
    echo(f"   visits with band = 'r': {[d['visit'] for d in bands]}")

    echo("\n3. Partial reads (bytes actually read from the file)")
    info = butler.get_file_info("calexp", instrument="LSSTCam", visit=2026112700001, detector=0)
    butler.io_stats.reset()
    header = butler.get("calexp.metadata", instrument="LSSTCam", visit=2026112700001, detector=0)
    echo(
        f"   calexp.metadata: TELESCOP={header.get('TELESCOP')!r}; read "
        f"{_size(butler.io_stats.bytes_read)} of a {_size(info.size)} file"
    )
    box = Box(x0=1000, y0=1000, width=100, height=100)
    for dataset_type in ("calexp", "calexp_compressed"):
        size = butler.get_file_info(
            dataset_type, instrument="LSSTCam", visit=2026112700001, detector=0
        ).size
        butler.io_stats.reset()
        cutout: Image = butler.get(
            dataset_type,
            instrument="LSSTCam",
            visit=2026112700001,
            detector=0,
            parameters={"bbox": box},
        )
        echo(
            f"   {dataset_type} 100x100 cutout: shape {cutout.shape}, "
            f"sky centre {cutout.wcs.pixel_to_world(50, 50).to_string('hmsdms', precision=1)}; "
            f"read {_size(butler.io_stats.bytes_read)} of {_size(size)}"
        )
    butler.io_stats.reset()
    dss_ref = butler.find_dataset("image", instrument="DSS", visit=126604, detector=0)
    assert dss_ref is not None
    dss_wcs = butler.get(dss_ref.make_component_ref("wcs"))
    echo(
        f"   DSS plate WCS only ({_size(butler.io_stats.bytes_read)} read): "
        f"pixel (50, 50) is {dss_wcs.pixel_to_world(50, 50).to_string('hmsdms', precision=1)}"
    )
    table_size = butler.get_file_info(
        "sources", instrument="LSSTCam", visit=2026112700001, detector=0
    ).size
    butler.io_stats.reset()
    fluxes = butler.get(
        "sources",
        instrument="LSSTCam",
        visit=2026112700001,
        detector=0,
        parameters={"columns": ["psf_flux"]},
    )
    echo(
        f"   sources column psf_flux: {len(fluxes)} rows, read "
        f"{_size(butler.io_stats.bytes_read)} of {_size(table_size)}"
    )
    refcat = butler.get("refcat", skymap="demo", tract=0)
    echo(
        f"   refcat: {len(refcat)} rows, clusters "
        f"{', '.join(sorted({str(c) for c in refcat['Cluster']}))}"
    )
    pixels = butler.memmap(
        "calexp", instrument="LSSTCam", visit=2026112700001, detector=0, hdu="IMAGE"
    )
    echo(
        f"   memory-mapped the IMAGE HDU through the offset index: shape {pixels.shape}, "
        f"median {float(np.median(pixels[:256, :256])):.1f} adu (no copy)"
    )

    echo("\n4. Transactions")
    with butler.transaction():
        for v in range(3):
            butler.put(
                {"visit": 2026112700002, "note": f"entry {v}"},
                "visit_summary",
                instrument="LSSTCam",
                visit=2026112700002,
                run=f"sample/notes{v}",
            )
    echo("   committed 3 visit_summary datasets in one transaction")
    try:
        with butler.transaction():
            butler.put(
                {"n": 1},
                "visit_summary",
                instrument="LSSTCam",
                visit=2026112700001,
                run="sample/aborted",
            )
            butler.put({"n": 2}, "visit_summary", instrument="STIS", visit=1, run="sample/aborted")
            raise RuntimeError("simulated failure in the middle of a transaction")
    except RuntimeError as exc:
        leftover = butler.query_datasets(
            "visit_summary", collections=butler.registry.all_runs(), find_first=False
        )
        aborted_dir = butler.root / "sample" / "aborted"
        echo(
            f"   a transaction that failed ({exc}) left {len(leftover) - 3} datasets, "
            f"{'a' if aborted_dir.exists() else 'no'} run directory and "
            f"{len(list((butler.root / '.staging').iterdir()))} staged files behind"
        )
    root = butler.root
    butler.close()
    remote_tour(root, workdir, echo)
    echo(f"\nDone. The sample repository is in {root}")


def remote_tour(repo: Path, workdir: Path, echo: Echo) -> None:
    """Serve the repository with ``butler serve`` and use it through ``Butler(url)``."""
    token = secrets.token_urlsafe(24)
    tokens_file = workdir / "tokens.yaml"
    tokens_file.write_text(
        f"tokens:\n  - name: demo\n    token: {token!r}\n    scopes: [read, write]\n"
    )
    tokens_file.chmod(0o600)
    echo("\n5. The same repository over HTTP (butler serve on 127.0.0.1)")
    with ServerProcess(repo, workdir / "server.log", "--tokens", str(tokens_file)) as server:
        echo(f"   serving at {server.url} (log: {server.log_path})")
        with Butler(server.url, collections="sample", token=token) as remote:
            refs = remote.query_datasets("image", where="instrument = 'WFPC2'")
            echo(f"   query over HTTP: {len(refs)} WFPC2 images")
            data_id = {"instrument": "LSSTCam", "visit": 2026112700001, "detector": 0}
            size = remote.get_file_info("calexp", data_id).size
            remote.io_stats.reset()
            header = remote.get("calexp.metadata", data_id)
            echo(
                f"   calexp.metadata over HTTP: EXPTIME={header['EXPTIME']}; "
                f"{_size(remote.io_stats.bytes_read)} transferred of a {_size(size)} file"
            )
            remote.io_stats.reset()
            cutout = remote.get(
                "calexp.image",
                data_id,
                parameters={"bbox": Box(x0=500, y0=700, width=100, height=100)},
            )
            echo(
                f"   100x100 pixel cutout over HTTP: mean {float(cutout.mean()):.1f} adu; "
                f"{_size(remote.io_stats.bytes_read)} transferred in one multi-range request"
            )
        with Butler(server.url, run="sample/remote", token=token) as writer:
            with writer.transaction():
                for v in range(2):
                    writer.put(
                        {"from": "remote", "n": v},
                        "visit_summary",
                        instrument="LSSTCam",
                        visit=2026112700001 + v,
                    )
            refs = writer.query_datasets("visit_summary", collections="sample/remote")
            echo(f"   remote transaction: {len(refs)} datasets uploaded and committed at once")
        proxy_tour(server.url, workdir, echo)
        mirror_dir = mirror_pull(server.url, workdir, echo)
    mirror_offline(mirror_dir, echo)


def mirror_pull(url: str, workdir: Path, echo: Echo) -> Path:
    """Pull a query's datasets into a local mirror (the server is still up)."""
    from mirror.pull import PullRequest, pull

    echo("\n7. An offline mirror of a query (mirror pull)")
    dest = workdir / "mirror"
    shutil.rmtree(dest, ignore_errors=True)
    request = PullRequest(
        source=url,
        dest=dest,
        dataset_types=["image", "calexp"],
        collections=["sample"],
        where="instrument IN ('WFPC2', 'LSSTCam')",
    )
    summary = pull(request, echo=lambda line: echo("   " + line.replace("\n", "\n   ")))
    echo(
        f"   downloaded {summary.downloaded} datasets ({_size(summary.downloaded_bytes)}), "
        f"checksums verified, into {dest}"
    )
    return dest


def mirror_offline(dest: Path, echo: Echo) -> None:
    """Read the mirror back with the server stopped."""
    echo("   the server is stopped now; reading the mirror with no network:")
    with DirectButler(dest, collections="sample") as offline:  # a mirror is a local repository
        refs = offline.query_datasets("image")
        header = offline.get(
            "calexp.metadata", instrument="LSSTCam", visit=2026112700001, detector=0
        )
        problems = offline.verify()
    echo(
        f"   {len(refs)} WFPC2 images and the calexp (EXPTIME={header['EXPTIME']}) read "
        f"offline; verify: {problems or 'all files intact'}"
    )


def proxy_tour(origin_url: str, workdir: Path, echo: Echo) -> None:
    """Put proxyd in front of the server: a cold read, a warm read, and the metrics."""
    from proxyd.process import ProxydProcess

    echo("\n6. A site cache in front of it (proxyd on 127.0.0.1)")
    cache_dir = workdir / "proxy-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    with ProxydProcess({"sample": origin_url}, cache_dir, workdir / "proxyd.log") as proxy:
        url = proxy.upstream_url("sample")
        echo(f"   proxyd at {proxy.url}: /sample/ -> {origin_url} (cache: {cache_dir})")
        data_id = {"instrument": "LSSTCam", "visit": 2026112700001, "detector": 0}
        for label in ("cold", "warm"):
            with Butler(url, collections="sample", cache_dir=workdir / f"client-{label}") as b:
                started = time.perf_counter()
                image = b.get("calexp", data_id)
                seconds = time.perf_counter() - started
            echo(
                f"   {label} read of the whole 48 MiB calexp through the proxy: "
                f"{seconds * 1000:.0f} ms (shape {image.shape})"
            )
        metrics = _metrics(proxy.url)
        origin_bytes = sum(
            v for k, v in metrics.items() if k.startswith("proxyd_bytes_from_origin_total")
        )
        echo(
            "   metrics: "
            f"{metrics.get('proxyd_cache_hits_total', 0):.0f} hits, "
            f"{metrics.get('proxyd_cache_misses_total', 0):.0f} misses, "
            f"{_size(metrics.get('proxyd_bytes_from_cache_total', 0))} from cache, "
            f"{_size(origin_bytes)} from the origin"
        )


def _metrics(proxy_url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(proxy_url + "metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
