"""``Butler(REMOTE_URL, mirror=DIR)``: read from a local mirror first, the remote for the rest.

For work that is mostly offline: datasets in the mirror are read locally with no network;
the others come from the remote repository, which is contacted only when needed (so a
missing network costs nothing until a dataset outside the mirror is asked for, and then the
error names the dataset, the mirror and the remote). Queries go to the remote when it can be
reached, else to the mirror; writes go to the remote.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from butler.blocking import forwarded, run_in_place
from butler.butler import Butler
from butler.direct_butler import DirectButler
from butler.errors import (
    CollectionNotFoundError,
    DatasetNotFoundError,
    DatasetTypeNotFoundError,
    RemoteUnavailableError,
)
from butler.io.source import ByteSource
from butler.reading import Collections, IOStats, Lookup, Reader
from butler.refs import DatasetRef, FileInfo
from butler.registry import Registry

T = TypeVar("T")

_NOT_LOCAL = (DatasetNotFoundError, CollectionNotFoundError, DatasetTypeNotFoundError)


class MirroredButler(Butler):
    """A remote repository read from a local mirror first (see the module)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        writeable: bool = False,
        run: str | None = None,
        collections: Collections = None,
        *,
        mirror: str | os.PathLike[str],
        **remote_options: Any,
    ) -> None:
        super().__init__(path, writeable, run, collections)
        if run is not None:
            # Refused now, as a local butler refuses it; the rest of what a remote open
            # checks (a read-only server, a CHAINED name) waits for the first remote use.
            Registry._check_collection_name(run)
        self.url = str(path)
        self.mirror_root = Path(mirror).expanduser().absolute()
        self.local = DirectButler(self.mirror_root, collections=collections)
        self.universe = self.local.universe
        self._options = remote_options
        self._remote: Butler | None = None
        self._mirror_reader = _MirrorReader(self)

    def __repr__(self) -> str:
        return f"Butler({self.url!r}, mirror={str(self.mirror_root)!r})"

    def remote(self) -> Butler:
        """The remote butler, connected on first use."""
        if self._remote is None:
            self._remote = Butler(
                self.url, self.writeable, self.run, self.collections, **self._options
            )
        return self._remote

    def _remote_or_none(self) -> Butler | None:
        try:
            return self.remote()
        except RemoteUnavailableError:
            return None

    def close(self) -> None:
        self.local.close()
        if self._remote is not None:
            self._remote.close()

    def info(self) -> dict[str, Any]:
        remote = self._remote_or_none()
        return {"mirror": self.local.info(), "remote": remote.info() if remote else None}

    # -- reading: mirror first -------------------------------------------------------------

    @property
    def _reader(self) -> Reader:
        return self._mirror_reader

    def _read(self, call: Callable[[Reader], Coroutine[Any, Any, T]]) -> T:
        # In place: the mirror's primitives do not wait, and the remote's run on its own
        # I/O thread (see _MirrorReader).
        return run_in_place(call(self._mirror_reader))

    # -- queries: the remote when reachable, else the mirror -------------------------------

    def _query_backend(self) -> Butler:
        return self._remote_or_none() or self.local

    get_dataset_type = forwarded(Butler.get_dataset_type, "_query_backend")
    dataset_types = forwarded(Butler.dataset_types, "_query_backend")
    query_collections = forwarded(Butler.query_collections, "_query_backend")
    get_collection_chain = forwarded(Butler.get_collection_chain, "_query_backend")
    query_datasets_with_files = forwarded(Butler.query_datasets_with_files, "_query_backend")
    query_data_ids = forwarded(Butler.query_data_ids, "_query_backend")
    query_dimension_records = forwarded(Butler.query_dimension_records, "_query_backend")
    query_summary = forwarded(Butler.query_summary, "_query_backend")
    query_dimension_values = forwarded(Butler.query_dimension_values, "_query_backend")

    # -- writing: the remote --------------------------------------------------------------

    transaction = forwarded(Butler.transaction, "remote")
    register_dataset_type = forwarded(Butler.register_dataset_type, "remote")
    register_run = forwarded(Butler.register_run, "remote")
    set_collection_chain = forwarded(Butler.set_collection_chain, "remote")
    insert_dimension_records = forwarded(Butler.insert_dimension_records, "remote")
    put = forwarded(Butler.put, "remote")
    remove = forwarded(Butler.remove, "remote")


class _MirrorReader(Reader):
    """The read path's primitives of a mirrored butler: a dataset the mirror holds is read
    from it; any other from the remote, connected on first use (its coroutines run on the
    remote butler's I/O thread, so this reader itself never waits on a loop)."""

    def __init__(self, butler: MirroredButler) -> None:
        self.butler = butler
        self.formatters = butler.local.formatters
        self.io_stats = IOStats()

    def _owner(self, ref: DatasetRef) -> Butler:
        # Each primitive below runs the owner's own primitive to its end (its coroutine on
        # its own I/O thread for the remote), so nothing here waits on an event loop.
        local = self.butler.local
        in_mirror = ref.id in local.registry.existing_ids([ref.id])
        return local if in_mirror else self.butler.remote()

    async def locate(self, lookup: Lookup) -> tuple[DatasetRef, FileInfo]:
        butler = self.butler
        try:
            return butler.local._read(lambda reader: reader.locate(lookup))
        except _NOT_LOCAL as local_miss:
            try:
                return butler.remote()._read(lambda reader: reader.locate(lookup))
            except RemoteUnavailableError as exc:
                raise DatasetNotFoundError(
                    f"{lookup.describe()} is not in the mirror {butler.mirror_root} "
                    f"({local_miss}), and the remote repository {butler.url} cannot be "
                    f"reached ({exc})."
                ) from exc

    async def byte_source(self, ref: DatasetRef, file: FileInfo) -> ByteSource:
        return self._owner(ref)._read(lambda reader: reader.byte_source(ref, file))

    async def local_file(self, ref: DatasetRef, file: FileInfo) -> Path:
        return self._owner(ref)._read(lambda reader: reader.local_file(ref, file))

    async def local_hdu(
        self, ref: DatasetRef, file: FileInfo, entry: Mapping[str, Any]
    ) -> tuple[Path, int]:
        return self._owner(ref)._read(lambda reader: reader.local_hdu(ref, file, entry))

    async def file_present(self, ref: DatasetRef, file: FileInfo) -> bool:
        return self._owner(ref)._read(lambda reader: reader.file_present(ref, file))

    async def file_uri(self, ref: DatasetRef, file: FileInfo) -> str:
        return self._owner(ref)._read(lambda reader: reader.file_uri(ref, file))
