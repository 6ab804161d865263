"""``Butler(REMOTE_URL, mirror=DIR)``: read from a local mirror first, the remote for the rest.

For work that is mostly offline: datasets in the mirror are read locally with no network;
the others come from the remote repository, which is contacted only when needed (so a
missing network costs nothing until a dataset outside the mirror is asked for, and then the
error names the dataset, the mirror and the remote). Queries go to the remote when it can be
reached, else to the mirror; writes go to the remote.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from butler.butler import Butler, Collections, DatasetLike, QuerySummary
from butler.direct_butler import DirectButler
from butler.errors import (
    CollectionNotFoundError,
    DatasetNotFoundError,
    DatasetTypeNotFoundError,
    RemoteUnavailableError,
)
from butler.io.source import ByteSource
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from butler.registry import Registry

_NOT_LOCAL = (DatasetNotFoundError, CollectionNotFoundError, DatasetTypeNotFoundError)


def _describe(
    dataset_type_or_ref: DatasetLike, data_id: Mapping[str, Any] | None, kwargs: Mapping[str, Any]
) -> str:
    if isinstance(dataset_type_or_ref, DatasetRef):
        return repr(dataset_type_or_ref)
    name = getattr(dataset_type_or_ref, "name", dataset_type_or_ref)
    values = ", ".join(f"{k}={v!r}" for k, v in {**dict(data_id or {}), **kwargs}.items())
    return f"dataset {name!r} {{{values}}}"


class MirroredButler(Butler):
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
        self.formatters = self.local.formatters
        self.universe = self.local.universe
        self._options = remote_options
        self._remote: Butler | None = None

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

    # -- reading: mirror first --------------------------------------------------------------

    def _resolve(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None,
        collections: Collections,
        kwargs: Mapping[str, Any],
    ) -> tuple[DatasetRef, FileInfo]:
        try:
            return self.local._resolve(dataset_type_or_ref, data_id, collections, kwargs)
        except _NOT_LOCAL as local_miss:
            try:
                return self.remote()._resolve(dataset_type_or_ref, data_id, collections, kwargs)
            except RemoteUnavailableError as exc:
                raise DatasetNotFoundError(
                    f"{_describe(dataset_type_or_ref, data_id, kwargs)} is not in the mirror "
                    f"{self.mirror_root} ({local_miss}), and the remote repository {self.url} "
                    f"cannot be reached ({exc})."
                ) from exc

    def _in_mirror(self, ref: DatasetRef) -> bool:
        return ref.id in self.local.registry.existing_ids([ref.id])

    def _open_source(self, ref: DatasetRef, file: FileInfo) -> ByteSource:
        if self._in_mirror(ref):
            return self.local._open_source(ref, file)
        return self.remote()._open_source(ref, file)

    def _local_file(self, ref: DatasetRef, file: FileInfo) -> Path:
        if self._in_mirror(ref):
            return self.local._local_file(ref, file)
        return self.remote()._local_file(ref, file)

    def _file_present(self, file: FileInfo) -> bool:
        if file.dataset_id in self.local.registry.existing_ids([file.dataset_id]):
            return self.local._file_present(file)
        return self.remote()._file_present(file)

    def get_uri(
        self,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> str:
        ref, _ = self._resolve(dataset_type_or_ref, data_id, collections, kwargs)
        owner: Butler = self.local if self._in_mirror(ref) else self.remote()
        return owner.get_uri(ref)

    # -- queries: the remote when reachable, else the mirror -------------------------------

    def _reader(self) -> Butler:
        return self._remote_or_none() or self.local

    def get_dataset_type(self, name: str) -> DatasetType:
        return self._reader().get_dataset_type(name)

    def dataset_types(self) -> list[DatasetType]:
        return self._reader().dataset_types()

    def query_collections(self) -> list[dict[str, Any]]:
        return self._reader().query_collections()

    def get_collection_chain(self, name: str) -> list[str]:
        return self._reader().get_collection_chain(name)

    def query_datasets_with_files(
        self,
        dataset_type: str | DatasetType,
        collections: Collections = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        find_first: bool = True,
        limit: int | None = None,
        offset: int = 0,
        **data_id: Any,
    ) -> list[tuple[DatasetRef, FileInfo]]:
        return self._reader().query_datasets_with_files(
            dataset_type,
            collections,
            where,
            bind,
            find_first=find_first,
            limit=limit,
            offset=offset,
            **data_id,
        )

    def query_data_ids(
        self,
        dimensions: str | Sequence[str],
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        dataset_type: str | None = None,
        collections: Collections = None,
        limit: int | None = None,
        offset: int = 0,
        **data_id: Any,
    ) -> list[DataCoordinate]:
        return self._reader().query_data_ids(
            dimensions,
            where,
            bind,
            dataset_type=dataset_type,
            collections=collections,
            limit=limit,
            offset=offset,
            **data_id,
        )

    def query_dimension_records(
        self,
        element: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        **data_id: Any,
    ) -> list[dict[str, Any]]:
        return self._reader().query_dimension_records(element, where, bind, limit=limit, **data_id)

    def query_summary(
        self,
        dataset_type: str | DatasetType,
        collections: Collections = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        find_first: bool = True,
        **data_id: Any,
    ) -> QuerySummary:
        return self._reader().query_summary(
            dataset_type, collections, where, bind, find_first=find_first, **data_id
        )

    def query_dimension_values(
        self,
        dimension: str,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        dataset_type: str | None = None,
        collections: Collections = None,
        **data_id: Any,
    ) -> list[Any]:
        return self._reader().query_dimension_values(
            dimension,
            where,
            bind,
            dataset_type=dataset_type,
            collections=collections,
            **data_id,
        )

    # -- writing: the remote --------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.remote().transaction():
            yield

    def register_dataset_type(
        self, name: str, dimensions: Iterable[str], storage_class: str, formatter: str | None = None
    ) -> DatasetType:
        return self.remote().register_dataset_type(name, dimensions, storage_class, formatter)

    def register_run(self, name: str, doc: str = "") -> bool:
        return self.remote().register_run(name, doc)

    def set_collection_chain(self, name: str, children: Sequence[str], doc: str = "") -> None:
        self.remote().set_collection_chain(name, children, doc)

    def insert_dimension_records(
        self, element: str, *records: Mapping[str, Any], skip_existing: bool = False
    ) -> int:
        return self.remote().insert_dimension_records(
            element, *records, skip_existing=skip_existing
        )

    def put(
        self,
        obj: Any,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        run: str | None = None,
        **data_id_kwargs: Any,
    ) -> DatasetRef:
        return self.remote().put(obj, dataset_type, data_id, run=run, **data_id_kwargs)

    def remove(
        self,
        refs: DatasetRef | Iterable[DatasetRef] | str,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> int:
        return self.remote().remove(refs, data_id, collections=collections, **kwargs)
