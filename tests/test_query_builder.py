"""The interactive query builder, the same on a local, a remote and a mirrored repository.

Counts, sizes and distinct values are checked against what a plain dataset query returns;
for the remote backend the access log shows they were computed by the server.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import populate_dimensions
from servers import READ_TOKEN, ButlerServer

from butler import Butler, DatasetTypeNotFoundError, InvalidQueryError
from butler.interactive.value_cache import ValueCache
from butler.query import parse_where
from mirror.pull import PullRequest, pull

REGISTRY_BACKENDS = ("sqlite", "postgresql")  # one suite, both registry engines

HSC_VISITS = [100, 101, 102, 103]
LSST_VISITS = [7, 8]


@pytest.fixture(autouse=True)
def completion_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "completion-cache"
    monkeypatch.setenv("BUTLER_COMPLETION_CACHE_DIR", str(path))
    return path


def add_second_instrument(butler: Butler) -> None:
    butler.insert_dimension_records("instrument", {"name": "LSSTCam", "detector_max": 189})
    butler.insert_dimension_records(
        "physical_filter", {"instrument": "LSSTCam", "name": "r_57", "band": "r"}
    )
    butler.insert_dimension_records("detector", {"instrument": "LSSTCam", "id": 0})
    butler.insert_dimension_records(
        "visit",
        *[{"instrument": "LSSTCam", "id": v, "physical_filter": "r_57"} for v in LSST_VISITS],
    )


@pytest.fixture(scope="module")
def query_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("query") / "repo"
    with Butler.create(root) as butler:
        populate_dimensions(butler)
        add_second_instrument(butler)
        butler.register_dataset_type("summary", ["visit", "detector"], "Dict")
        butler.register_dataset_type("deepCoadd", ["tract", "patch", "band"], "Image")
    with Butler(root, run="run1") as butler, butler.transaction():
        for visit in HSC_VISITS:
            for detector in (0, 1, 2):
                butler.put(
                    {"visit": visit, "detector": detector, "pad": "x" * visit},
                    "summary",
                    instrument="HSC",
                    visit=visit,
                    detector=detector,
                )
        for visit in LSST_VISITS:
            butler.put({"visit": visit}, "summary", instrument="LSSTCam", visit=visit, detector=0)
    return root


@pytest.fixture(scope="module")
def query_server(
    query_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ButlerServer]:
    srv = ButlerServer(query_repo, tmp_path_factory.mktemp("query-server")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mirror_dir(query_server: ButlerServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("query-mirror") / "mirror"
    summary = pull(
        PullRequest(
            source=query_server.url, dest=dest, dataset_types=["summary"], token=READ_TOKEN
        ),
        lambda _: None,
    )
    assert summary.downloaded == len(HSC_VISITS) * 3 + len(LSST_VISITS)
    return dest


@pytest.fixture(params=["local", "remote", "mirror"])
def qbutler(request: pytest.FixtureRequest, query_repo: Path, tmp_path: Path) -> Iterator[Butler]:
    if request.param == "local":
        butler = Butler(query_repo)
    elif request.param == "remote":
        srv: ButlerServer = request.getfixturevalue("query_server")
        butler = Butler(srv.url, token=READ_TOKEN, cache_dir=tmp_path / "files")
    else:
        srv = request.getfixturevalue("query_server")
        butler = Butler(
            srv.url,
            mirror=request.getfixturevalue("mirror_dir"),
            token=READ_TOKEN,
            cache_dir=tmp_path / "files",
        )
    with butler:
        yield butler


def test_dataset_types_are_attributes_and_keys(qbutler: Butler) -> None:
    assert {"summary", "deepCoadd"} <= set(dir(qbutler.query))
    assert qbutler.query._ipython_key_completions_() == ["deepCoadd", "summary"]
    assert qbutler.query.summary.dataset_type.name == "summary"
    assert qbutler.query["deepCoadd"].dimensions[:3] == ("band", "skymap", "tract")
    with pytest.raises(AttributeError, match="did you mean summary"):
        qbutler.query.sumary  # noqa: B018
    with pytest.raises(KeyError, match="'nope'"):
        qbutler.query["nope"]


def test_where_signature_lists_the_dataset_types_dimensions(qbutler: Butler) -> None:
    summary = inspect.signature(qbutler.query.summary.where)
    keywords = [p.name for p in summary.parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert keywords == [
        "instrument",
        "detector",
        "visit",
        "band",
        "physical_filter",
        "day_obs",
        "bind",
    ]
    coadd = inspect.signature(qbutler.query.deepCoadd.where)
    assert [p for p in coadd.parameters if p != "bind"][1:] == [
        "band",
        "skymap",
        "tract",
        "patch",
    ]
    with pytest.raises(InvalidQueryError, match="has no dimension 'tract'"):
        qbutler.query.summary.where(tract=1)


def test_count_size_and_values_follow_the_constraints(qbutler: Butler) -> None:
    q = qbutler.query.summary
    everything = qbutler.query_datasets_with_files("summary")
    assert q.count() == len(everything) == 14
    assert q.size() == sum(f.size for _, f in everything)
    hsc = q.where(instrument="HSC")
    assert hsc.values("visit") == HSC_VISITS
    assert hsc.values["detector"] == [0, 1, 2]
    assert q.where(instrument="LSSTCam").values("visit") == LSST_VISITS
    assert q.values("instrument") == ["HSC", "LSSTCam"]
    narrowed = hsc.where(visit=[101, 103], detector=range(1, 3))
    assert narrowed.count() == 4
    rows = qbutler.query_datasets_with_files(
        "summary", where="visit IN (101, 103) AND detector IN (1, 2)", instrument="HSC"
    )
    assert narrowed.size() == sum(f.size for _, f in rows)
    assert sorted(ref.id for ref in narrowed) == sorted(ref.id for ref, _ in rows)
    assert hsc.where(band="r").values("visit") == [101, 103]


def test_choices_narrow_to_a_value(qbutler: Butler) -> None:
    hsc = qbutler.query.summary.where(instrument="HSC")
    assert list(hsc.choices.visit) == HSC_VISITS
    assert hsc.choices.visit._ipython_key_completions_() == HSC_VISITS
    one = hsc.choices.visit[102]
    assert one.count() == 3
    assert one.values("detector") == [0, 1, 2]
    with pytest.raises(KeyError, match="not a possible visit"):
        hsc.choices.visit[7]


def test_to_where_renders_bind_values_safely(qbutler: Butler) -> None:
    q = qbutler.query.summary.where(
        "visit > :low AND visit.target_name != :name",
        bind={"low": 100, "name": "O'Brien'); DROP TABLE dataset; --"},
        instrument="HSC",
    )
    text = q.to_where()
    assert text == (
        "instrument = 'HSC' AND visit > 100 AND "
        "visit.target_name != 'O''Brien''); DROP TABLE dataset; --'"
    )
    assert parse_where(text) is not None
    same = qbutler.query.summary.where(text)
    assert same.count() == q.count() == 9
    assert qbutler.query.summary.where(visit=range(101, 104)).to_where() == "visit IN (101..103)"


def test_iteration_get_and_get_async(qbutler: Butler) -> None:
    q = qbutler.query.summary.where(instrument="HSC", visit=101)
    refs = list(q)
    assert [ref.data_id["detector"] for ref in refs] == [0, 1, 2]
    got = q.get()
    assert [g["detector"] for g in got] == [0, 1, 2]
    assert asyncio.run(q.get_async(concurrency=2)) == got


def test_reprs_show_totals_and_first_rows(qbutler: Butler) -> None:
    q = qbutler.query.summary.where(instrument="HSC")
    text = repr(q)
    assert q.size() == 1770
    assert text.splitlines()[0].endswith("12 datasets, 1.7 KiB")
    assert "where: instrument = 'HSC'" in text
    assert "... and 7 more" in text
    html = q._repr_html_()
    assert html.count("<tr>") == 1 + 5
    assert "<td>HSC</td>" in html
    assert "instrument = &#x27;HSC&#x27;" in html


def test_remote_counts_and_values_are_computed_by_the_server(
    query_server: ButlerServer, tmp_path: Path
) -> None:
    with Butler(query_server.url, token=READ_TOKEN, cache_dir=tmp_path / "files") as butler:
        mark = query_server.mark()
        hsc = butler.query.summary.where(instrument="HSC")
        assert hsc.count() == 12
        assert hsc.values("visit") == HSC_VISITS
        targets = [e["target"].partition("?")[0] for e in query_server.access_log()[mark:]]
    assert "/api/v1/datasets/summary" in targets
    assert "/api/v1/dimensions/visit/values" in targets
    assert "/api/v1/datasets/query" not in targets


def test_values_are_cached_for_offline_completion(
    query_repo: Path, tmp_path: Path, completion_cache: Path
) -> None:
    server = ButlerServer(query_repo, tmp_path).start()
    try:
        butler = Butler(server.url, token=READ_TOKEN, cache_dir=tmp_path / "files")
        # ttl=0: every call asks the server, so the answers below can only come from the
        # cache because the server is gone.
        butler.query._cache = ValueCache(completion_cache, ttl=0)
        hsc = butler.query.summary.where(instrument="HSC")
        assert hsc.values("visit") == HSC_VISITS
        assert butler.query.names() == ["deepCoadd", "summary"]
    finally:
        server.stop()
    assert hsc.values("visit") == HSC_VISITS
    assert dir(butler.query)[:2] == ["dataset_types", "deepCoadd"]
    with pytest.raises(Exception, match="cannot reach"):
        hsc.values("detector")  # never asked while online: nothing to fall back on
    butler.close()


def test_unknown_dataset_type_names_the_known_ones(qbutler: Butler) -> None:
    with pytest.raises(DatasetTypeNotFoundError, match="registered: deepCoadd, summary"):
        qbutler.query("calexp")


def test_values_asked_for_are_current_after_a_put(butler: Butler) -> None:
    q = butler.query.summary.where(instrument="HSC")
    assert q.values("visit") == []
    assert q.count() == 0
    butler.put({"n": 1}, "summary", instrument="HSC", visit=105, detector=0)
    assert q.values("visit") == [105]
    assert q.count() == 1
    # Completion accepts the answer just stored.
    assert q.choices.visit._ipython_key_completions_() == [105]
