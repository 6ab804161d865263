"""``mirror pull``: query a source repository, then copy what the mirror lacks.

Steps: run the query on the source (a server, a proxy of one, or a local path); plan against
what the mirror holds; refuse if the disk lacks room; copy the dataset types, dimension
records and collections the datasets need; download the files (bounded concurrency,
resumable, verified); and commit registry rows in batches, only for verified files, each
under the UUID it has at the source. Interrupted at any point, the mirror never claims a file
it lacks; the next pull resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from butler.butler import is_remote_uri
from butler.direct_butler import DirectButler, IngestEntry
from butler.errors import ButlerError, RemoteUnavailableError, RepositoryConfigError
from butler.remote.limits import is_disk_full
from butler.repo_config import CONFIG_NAME, check_new_repo_root
from butler.units import human_size
from butler.universe import safe_dump_yaml
from mirror.daf_source import DafFetcher, DafSource, daf_config
from mirror.http import HttpFetcher
from mirror.plan import Item, Plan, describe_plan, make_plan
from mirror.source import HttpSource, Source
from mirror.state import MirrorState
from mirror.transfer import (
    PARTIAL_DIR,
    Halt,
    LocalFetcher,
    TransferSettings,
    disk_failure,
    free_bytes,
    partial_path,
    partial_sizes,
    remove_partial_dir,
    run_transfers,
)
from mirror.via import via_route

COMMIT_MAX = 2000
"""Files one registry commit records at most."""
Echo = Callable[[str], None]


class NotEnoughSpaceError(ButlerError, OSError):
    error_type = "NotEnoughSpaceError"


class DiskFullError(NotEnoughSpaceError):
    """The destination filled up during a pull (another writer, a quota, a thin volume)."""

    error_type = "DiskFullError"


@dataclass
class PullRequest:
    source: str
    dest: Path
    dataset_types: Sequence[str]
    collections: Sequence[str] = ()
    where: str = ""
    bind: Mapping[str, Any] = field(default_factory=dict)
    jobs: int = 8
    dry_run: bool = False
    via: str | None = None
    token: str | None = None


@dataclass
class PullSummary:
    plan: Plan
    downloaded: int = 0
    downloaded_bytes: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    file_requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.as_dict(),
            "downloaded": self.downloaded,
            "downloaded_bytes": self.downloaded_bytes,
            "skipped": self.skipped,
            "failed": [{"dataset": d, "reason": r} for d, r in self.failed],
            "seconds": round(self.seconds, 3),
            "rate_bytes_per_second": round(self.downloaded_bytes / self.seconds)
            if self.seconds
            else 0,
        }


def open_source(source: str, via: str | None, token: str | None) -> Source:
    """The repository to query: ``source``, or its path through the caching proxy at
    ``via`` (the proxy's base URL; :mod:`mirror.via` finds the route)."""
    target = source if via is None else via_route(via, source)
    if is_remote_uri(target):
        return HttpSource(target, token)
    path = Path(target).expanduser()
    if not path.exists():
        raise RepositoryConfigError(f"source {target} is neither an http(s) URL nor a directory")
    config = daf_config(path)
    if config is not None:
        return DafSource(config)
    if not path.is_dir() or not (path / CONFIG_NAME).is_file():
        raise RepositoryConfigError(
            f"source {target} is not a repository: neither this butler's nor the LSST "
            f"butler's {CONFIG_NAME} is there"
        )
    return DirectButler(path)


def open_mirror(dest: Path, source: Source) -> DirectButler:
    """The destination repository, created with the source's dimension universe if new."""
    if (dest / CONFIG_NAME).exists():
        return DirectButler(dest, writeable=True)
    universe_file = dest.parent / f".{dest.name}-universe.yaml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    universe_file.write_text(safe_dump_yaml(source.universe.config))
    try:
        return DirectButler.create_repository(
            dest,
            universe=universe_file,
            description=f"mirror of {_describe_source(source)}",
            # Downloads of a pull stopped before (none yet recorded) are resumed.
            tolerated={PARTIAL_DIR},
        )
    finally:
        universe_file.unlink(missing_ok=True)


def _describe_source(source: Source) -> str:
    if isinstance(source, HttpSource):
        return source.url
    if isinstance(source, DafSource):
        return f"the LSST butler repository {source.root}"
    return str(source.root)


def query_items(
    source: Source,
    dataset_types: Sequence[str],
    collections: Sequence[str],
    where: str,
    bind: Mapping[str, Any],
) -> list[Item]:
    items: list[Item] = []
    for dataset_type in dataset_types:
        rows = source.query_datasets_with_files(
            dataset_type,
            list(collections) or None,
            where,
            dict(bind),
            find_first=bool(collections),
        )
        items += [Item(ref, file) for ref, file in rows]
    return items


def copy_definitions(
    source: DirectButler | HttpSource, mirror: DirectButler, items: Sequence[Item]
) -> None:
    """Dataset types and dimension records the items need, copied from the source."""
    types = {item.ref.dataset_type.name: item.ref.dataset_type for item in items}
    universe = mirror.universe
    closure = {element: universe.required_closure([element]) for element in universe.names}
    needed: dict[str, set[tuple[tuple[str, Any], ...]]] = defaultdict(set)
    for item in items:
        values = dict(item.ref.data_id)
        for element in values:
            keys = closure[element]
            if all(k in values for k in keys):
                needed[element].add(tuple((k, values[k]) for k in keys))
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    fetched: dict[str, set[tuple[tuple[str, Any], ...]]] = defaultdict(set)
    # Dependents first, so a record's implied dimensions (a visit's physical_filter) are
    # known before those elements are fetched.
    for element in reversed(universe.names):
        wanted = needed[element] - fetched[element]
        for record in _fetch_records(source, universe, element, wanted):
            records[element].append(record)
            spec = universe[element]
            own = {k: record[k] for k in closure[element] if k != element}
            own[element] = record[spec.key_name]
            fetched[element].add(tuple((k, own[k]) for k in closure[element]))
            for implied in spec.implies:
                if record.get(implied) is None:
                    continue
                parent_keys = closure[implied]
                values = {**own, implied: record[implied]}
                if all(k in values for k in parent_keys):
                    needed[implied].add(tuple((k, values[k]) for k in parent_keys))
    with mirror.transaction():
        for name, dataset_type in types.items():
            mirror.register_dataset_type(
                name, dataset_type.dimensions, dataset_type.storage_class, dataset_type.formatter
            )
        for element in universe.names:
            if records[element]:
                mirror.insert_dimension_records(element, *records[element], skip_existing=True)


def _fetch_records(
    source: DirectButler | HttpSource,
    universe: Any,
    element: str,
    wanted: Iterable[tuple[tuple[str, Any], ...]],
) -> list[dict[str, Any]]:
    by_parents: dict[tuple[tuple[str, Any], ...], list[Any]] = defaultdict(list)
    for key in wanted:
        parents = tuple((k, v) for k, v in key if k != element)
        by_parents[parents].append(dict(key)[element])
    out: list[dict[str, Any]] = []
    for parents, keys in by_parents.items():
        for start in range(0, len(keys), 500):
            chunk = sorted(set(keys[start : start + 500]), key=str)
            out += source.query_dimension_records(
                element, f"{element} IN (:values)", {"values": chunk}, **dict(parents)
            )
    return out


def copy_collections(source: Source, mirror: DirectButler, collections: Sequence[str]) -> None:
    """Recreate CHAINED collections that were queried (their RUN children may be empty)."""
    kinds = {c["name"]: c for c in source.query_collections()}

    def ensure(name: str, depth: int = 0) -> None:
        info = kinds.get(name)
        if info is None or depth > 50:
            return
        if info["type"] == "RUN":
            mirror.register_run(name)
            return
        children = list(info.get("children") or source.get_collection_chain(name))
        for child in children:
            ensure(child, depth + 1)
        mirror.set_collection_chain(name, children)

    for name in collections:
        ensure(name)


def provenance_rows(
    items: Iterable[Item],
    query_id: int,
    source: str,
    computed: Mapping[uuid.UUID, str] | None = None,
) -> list[dict[str, Any]]:
    """Provenance of mirrored datasets: which query brought them, from where, what bytes
    (the checksum ``computed`` as a file was copied, when the source recorded none)."""
    return [
        {
            "dataset_id": str(i.ref.id),
            "query_id": query_id,
            "source": source,
            "size": i.file.size,
            "checksum": i.file.checksum or (computed or {}).get(i.ref.id, ""),
        }
        for i in items
    ]


def warm_up_sqlite() -> None:
    """Import sqlite-utils (and the numpy it loads) and open a database in memory, which
    loads its plugins (an entry-point scan of every installed package): ~0.13 s of a
    pull's start on the bench machine, otherwise spent when the mirror is opened."""
    import sqlite_utils

    sqlite_utils.Database(memory=True).close()


def pull(request: PullRequest, echo: Echo, progress: Any = None) -> PullSummary:
    """Run a pull end to end (see the module docstring); ``progress`` is a rich Progress.

    A destination that fills up on the way raises :class:`DiskFullError`, which says what
    is kept (what was committed is recorded and valid, partial downloads stay for the
    resume); SQLite's own "database or disk is full" included, which is no OSError.
    """
    started = time.monotonic()
    with (
        _naming_the_source(request),
        contextlib.closing(open_source(request.source, request.via, request.token)) as source,
    ):
        # The mirror's SQLite layer is made ready while the source answers the query, which
        # mostly waits on the network (see warm_up_sqlite).
        threading.Thread(target=warm_up_sqlite, name="warm-up", daemon=True).start()
        items = query_items(
            source, request.dataset_types, request.collections, request.where, request.bind
        )
        dest = request.dest.absolute()
        summary: PullSummary | None = None
        try:
            summary = plan_pull(request, items, echo, resumes=isinstance(source, HttpSource))
            if not request.dry_run:
                _write(request, source, summary, progress, started)
            return summary
        except (OSError, sqlite3.Error) as exc:
            if isinstance(exc, NotEnoughSpaceError) or not is_disk_full(exc):
                raise
            raise disk_full_error(dest, summary, exc) from None


@contextlib.contextmanager
def _naming_the_source(request: PullRequest) -> Iterator[None]:
    """Through a proxy, a repository out of reach is named by the proxy's path for it (the
    proxy's 502): say which source that is, and through which proxy."""
    try:
        yield
    except RemoteUnavailableError as exc:
        if request.via is None:
            raise
        raise RemoteUnavailableError(
            f"{exc} (the source {request.source}, pulled through the proxy at {request.via})"
        ) from exc


def plan_pull(
    request: PullRequest, items: list[Item], echo: Echo, *, resumes: bool = True
) -> PullSummary:
    """The plan against what the mirror holds (told with ``echo``); refused if the
    destination lacks room for it. ``resumes``: whether the fetcher appends to partial
    files (over HTTP) or, copying local files, starts them over (so none is counted as
    resumed)."""
    dest = request.dest.absolute()
    present: set[uuid.UUID] = set()
    if (dest / CONFIG_NAME).exists():
        with DirectButler(dest) as existing:
            present = existing.registry.existing_ids(i.ref.id for i in items)
    else:
        # Before anything is written: a new mirror goes only where a repository may.
        check_new_repo_root(dest, tolerated={PARTIAL_DIR})
    partial = {uuid.UUID(k): v for k, v in partial_sizes(dest).items()} if resumes else {}
    plan = make_plan(items, present, partial, free_bytes(dest))
    echo(describe_plan(plan))
    if not plan.fits:
        raise NotEnoughSpaceError(
            f"not enough space at {dest}: the pull needs {human_size(plan.needed_bytes)} "
            f"and {human_size(plan.free_bytes)} is free; free some space or narrow the "
            "query (--where, --dataset-type)"
        )
    return PullSummary(plan=plan, skipped=len(plan.present))


def _write(
    request: PullRequest, source: Source, summary: PullSummary, progress: Any, started: float
) -> None:
    """Carry out the plan: open the mirror, transfer, and record the pull."""
    plan = summary.plan
    with contextlib.closing(open_for_pull(request, source, plan)) as opened:
        state = opened.state
        try:
            if plan.to_fetch:
                asyncio.run(_transfer(request, source, opened, plan, summary, progress))
            state.add_provenance(provenance_rows(plan.present, opened.query_id, request.source))
            state.mark_pulled(opened.query_id)
        except BaseException as exc:
            if is_disk_full(exc):  # say it failed, if even that still fits
                with contextlib.suppress(sqlite3.Error):
                    _finish(opened, summary, started, failed=True)
            raise
        _finish(opened, summary, started, failed=bool(summary.failed))
    remove_partial_dir(request.dest.absolute())


def _finish(opened: OpenedMirror, summary: PullSummary, started: float, failed: bool) -> None:
    summary.seconds = time.monotonic() - started
    opened.state.finish_pull(
        opened.pull_id,
        "failed" if failed else "complete",
        summary.downloaded,
        summary.skipped,
        len(summary.failed),
        summary.downloaded_bytes,
    )


def disk_full_error(dest: Path, summary: PullSummary | None, error: BaseException) -> DiskFullError:
    """What to tell when the destination filled up: how much room the rest needs, how much
    there is, and what is kept."""
    free = free_bytes(dest)
    kept = sum(partial_sizes(dest).values())
    if summary is None:  # before the plan: nothing of this pull was written
        return DiskFullError(
            f"the destination {dest} is full ({error}): {human_size(free)} is free; free some "
            "space and run the same command again"
        )
    plan = summary.plan
    left = len(plan.to_fetch) - summary.downloaded
    missing = max(0, sum(i.file.size for i in plan.to_fetch) - summary.downloaded_bytes - kept)
    needs = (
        f"the {left} datasets not yet mirrored need {human_size(missing)} more (and some room "
        "for the registry)"
        if left
        else "the pull has no file left to fetch but needs some room for its records"
    )
    partial = (
        f"; {human_size(kept)} of partial downloads in {dest / PARTIAL_DIR} are kept and resumed"
        if kept
        else ""
    )
    return DiskFullError(
        f"the destination {dest} is full ({error}): {human_size(free)} is free, and {needs}. "
        f"The {len(plan.present) + summary.downloaded} datasets mirrored so far are recorded "
        f"and valid{partial}. Free some space (or narrow the query with --where) and run the "
        "same command again to resume."
    )


@dataclass
class OpenedMirror:
    """The mirror's repository and state, opened for one pull that is recorded in them."""

    mirror: DirectButler
    state: MirrorState
    pull_id: int = 0
    query_id: int = 0

    def close(self) -> None:
        self.state.close()
        self.mirror.close()


def open_for_pull(request: PullRequest, source: Source, plan: Plan) -> OpenedMirror:
    """Open (or create) the mirror, record the pull and its query, and copy the definitions
    that the files to fetch need, so that they can be committed as they arrive."""
    dest = request.dest.absolute()
    mirror = open_mirror(dest, source)
    try:
        opened = OpenedMirror(mirror, MirrorState(dest))
    except BaseException:
        mirror.close()
        raise
    try:
        opened.pull_id = opened.state.start_pull(request.source)
        opened.query_id = opened.state.record_query(
            request.source, request.dataset_types, request.collections, request.where, request.bind
        )
        if not plan.to_fetch:
            pass
        elif isinstance(source, DafSource):
            # Its records come with its datasets' data IDs (see mirror.daf_source).
            source.copy_definitions(mirror, plan.to_fetch)
        else:
            copy_definitions(source, mirror, plan.to_fetch)
        copy_collections(source, mirror, request.collections)
    except BaseException:
        opened.close()
        raise
    return opened


async def _transfer(
    request: PullRequest,
    source: Source,
    opened: OpenedMirror,
    plan: Plan,
    summary: PullSummary,
    progress: Any,
) -> None:
    # Commits, local copies and re-hashing of resumed partial files run in threads: enough
    # of them that the downloads never queue behind a commit.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=max(8, 2 * request.jobs), thread_name_prefix="mirror-io")
    )
    dest = request.dest.absolute()
    fetcher: HttpFetcher | LocalFetcher
    if isinstance(source, DafSource):
        fetcher = DafFetcher()
    elif isinstance(source, HttpSource):
        fetcher = HttpFetcher(
            source.url,
            request.token,
            TransferSettings(jobs=request.jobs),
            partials={
                partial_path(dest, i).name for i in plan.to_fetch if i.ref.id in plan.partial_ids
            },
            # Through a caching proxy, one GET per file: that is what it caches.
            bundle_files=source.bundle_files if request.via is None else 0,
        )
    else:
        fetcher = LocalFetcher(source.root)
    # An LSST butler's files have no checksum at the source: the one computed as each was
    # copied (and its index, built when it is recorded).
    computed = fetcher.checksums if isinstance(fetcher, DafFetcher) else {}
    bytes_task = files_task = None
    if progress is not None:
        files_task = progress.add_task("datasets", total=len(plan.to_fetch))
        bytes_task = progress.add_task(
            "bytes", total=plan.fetch_bytes + plan.resumable_bytes, completed=plan.resumable_bytes
        )
    # Files come here verified; the commit makes them durable before recording them.
    verified: asyncio.Queue[tuple[Item, Path] | None] = asyncio.Queue()
    # Set once the destination is full: no more downloads start.
    halt = Halt()

    def on_bytes(n: int) -> None:
        if progress is not None:
            progress.advance(bytes_task, n)

    def commit(batch: list[tuple[Item, Path]]) -> None:
        opened.mirror.ingest_many(
            [
                IngestEntry(
                    path,
                    item.ref.dataset_type.name,
                    item.ref.data_id.required,
                    run=item.ref.run,
                    dataset_id=item.ref.id,
                    # Verified while it was downloaded, so the source's index describes it too.
                    checksum=item.file.checksum or computed[item.ref.id],
                    size=item.file.size,
                    index=item.file.index if item.file.checksum else None,
                    index_formatter=item.file.formatter,
                )
                for item, path in batch
            ],
            transfer="move",
        )

    def record_provenance(batch: list[tuple[Item, Path]]) -> None:
        opened.state.add_provenance(
            provenance_rows([i for i, _ in batch], opened.query_id, request.source, computed)
        )

    async def committer() -> None:
        """One task commits verified files, so downloads never wait for it.

        Group commit: each commit takes every file verified meanwhile (up to COMMIT_MAX),
        and the next starts as soon as it ends. Files so gather in batches as large as a
        commit is slow (on the bench, 100-400 files while the downloads run), each commit's
        fixed cost (flushes of the file system, the journal, SQLite) is paid once per batch,
        and after the last download only what arrived during the last commit is left.
        """
        done = False
        while not done:
            first = await verified.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < COMMIT_MAX and not verified.empty():
                entry = verified.get_nowait()
                if entry is None:
                    done = True
                    break
                batch.append(entry)
            try:
                await asyncio.to_thread(commit, batch)
            except (OSError, sqlite3.Error) as exc:
                if not isinstance(exc, OSError) and not is_disk_full(exc):
                    raise
                # Not made durable (an I/O error, a full disk): nothing of the batch is
                # recorded. Its partial files stay, to be verified again by the next pull.
                for item, _ in batch:
                    on_failed(item, disk_failure(exc))
                if is_disk_full(exc):
                    halt.disk_full(exc)
                continue
            summary.downloaded += len(batch)
            summary.downloaded_bytes += sum(i.file.size for i, _ in batch)
            if progress is not None:
                progress.advance(files_task, len(batch))
            try:
                await asyncio.to_thread(record_provenance, batch)
            except sqlite3.Error as exc:
                # Recorded, but not which query brought them: the next pull adds that (the
                # provenance of every dataset it finds present).
                if not is_disk_full(exc):
                    raise
                halt.disk_full(exc)

    async def on_done(item: Item, path: Path) -> None:
        verified.put_nowait((item, path))

    def on_failed(item: Item, reason: str) -> None:
        summary.failed.append(
            (f"{item.ref.dataset_type.name} {dict(item.ref.data_id.required)}", reason)
        )

    commits = asyncio.create_task(committer())
    async with fetcher:
        try:
            await run_transfers(
                fetcher, plan.to_fetch, dest, request.jobs, on_bytes, on_done, on_failed, halt
            )
        finally:
            verified.put_nowait(None)
            await commits
        summary.file_requests = fetcher.requests
    if halt.error is not None:  # what was verified before is committed; the rest is not
        raise halt.error
