"""The read path, written once: :class:`Reader`.

Every backend reads the same way (find the dataset and its file record, pick the formatter,
read only the bytes it asks for; ``open``, ``exists``, ``memmap`` ...) and differs only in a
few primitives: how a dataset is found, how its bytes are reached, whether its file is there.
The read path is written as coroutines over those primitives so that one copy serves both
clients: :class:`~butler.remote.async_butler.AsyncButler` awaits it on the caller's event
loop, and the blocking :class:`~butler.butler.Butler` runs the same coroutines to the end
(:mod:`butler.blocking`) — in place for a local repository, whose primitives never wait, or
on the I/O thread of a remote one.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from butler.errors import DatasetNotFoundError
from butler.formatters.registry import ORIGIN_KEY, FormatterRegistry
from butler.io.source import ByteSource, RangeFile
from butler.memmap import map_hdu, memmap_entry
from butler.refs import DatasetRef, DatasetType, FileInfo

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")

DatasetLike = str | DatasetType | DatasetRef
Collections = str | Sequence[str] | None


def as_collection_list(collections: Collections) -> list[str] | None:
    if collections is None:
        return None
    if isinstance(collections, str):
        return [collections]
    return list(collections)


@dataclass
class IOStats:
    """Bytes and read requests that this butler's reads have made (for checks and tests)."""

    bytes_read: int = 0
    requests: int = 0

    def reset(self) -> None:
        self.bytes_read = 0
        self.requests = 0

    def add(self, source: ByteSource) -> None:
        self.bytes_read += source.bytes_read
        self.requests += source.requests


@dataclass(frozen=True)
class Lookup:
    """A dataset a read names: a ref, or a dataset type (``"calexp.metadata"`` names a
    component) with data ID values, searched in ``collections`` (None: the butler's)."""

    target: DatasetLike
    data_id: Mapping[str, Any] | None = None
    collections: Collections = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, Any]:
        """The data ID values given, as one mapping."""
        return {**dict(self.data_id or {}), **self.kwargs}

    def describe(self) -> str:
        if isinstance(self.target, DatasetRef):
            return repr(self.target)
        name = self.target.name if isinstance(self.target, DatasetType) else self.target
        values = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"dataset {name!r} {{{values}}}"


class Reader(ABC):
    """Reading datasets, as coroutines over a backend's primitives (the abstract methods).

    The public methods take ``self`` positionally only (``self, /``) so that their
    blocking twins (:func:`butler.blocking.blocking`) keep exact signatures for a type
    checker, ``**kwargs`` (data ID values) included.
    """

    formatters: FormatterRegistry
    io_stats: IOStats

    # -- primitives -----------------------------------------------------------------------

    @abstractmethod
    async def locate(self, lookup: Lookup) -> tuple[DatasetRef, FileInfo]:
        """The dataset (with its component, if one was named) and its file record; raises
        ``DatasetNotFoundError`` if it is not in the collections searched."""

    @abstractmethod
    async def byte_source(self, ref: DatasetRef, file: FileInfo) -> ByteSource:
        """Random access to the dataset's file (the caller closes it)."""

    @abstractmethod
    async def local_file(self, ref: DatasetRef, file: FileInfo) -> Path:
        """A complete, verified local copy (or the file itself) of the dataset's file."""

    @abstractmethod
    async def file_present(self, ref: DatasetRef, file: FileInfo) -> bool:
        """Whether the file of a registered dataset can be read."""

    @abstractmethod
    async def file_uri(self, ref: DatasetRef, file: FileInfo) -> str:
        """Where the dataset's file lives (``file://`` or ``http(s)://``)."""

    async def local_hdu(
        self, ref: DatasetRef, file: FileInfo, entry: Mapping[str, Any]
    ) -> tuple[Path, int]:
        """A local file holding the data bytes of one HDU, and where they start in it: the
        whole file here; a remote backend fetches just those bytes."""
        return await self.local_file(ref, file), int(entry["data_offset"])

    async def run_blocking(self, work: Callable[[], T]) -> T:
        """Run a formatter's blocking read: in place here (a local file, no event loop to
        keep free); an asynchronous backend runs it in a worker thread."""
        return work()

    # -- the read path --------------------------------------------------------------------

    async def resolve(
        self,
        /,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> tuple[DatasetRef, FileInfo]:
        """The dataset's ref (with its component) and its file record; raises
        ``DatasetNotFoundError`` if it is not in the collections searched."""
        return await self.locate(Lookup(dataset_type_or_ref, data_id, collections, kwargs))

    async def find_dataset(
        self,
        /,
        dataset_type: str | DatasetType,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> DatasetRef | None:
        """The ref of a dataset, or None if it is not in the collections searched."""
        try:
            ref, _ = await self.resolve(dataset_type, data_id, collections=collections, **kwargs)
        except DatasetNotFoundError:
            return None
        return ref

    async def get_file_info(
        self,
        /,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> FileInfo:
        """Size, checksum, format and offset index of a dataset's file."""
        _, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return file

    async def get(
        self,
        /,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        collections: Collections = None,
        **kwargs: Any,
    ) -> Any:
        """Read a dataset (or a component: ``"calexp.metadata"``), or part of it.

        ``parameters`` select a part (``{"bbox": Box(...)}`` for images, ``{"columns": [...]}``
        for tables) and only the bytes needed are read.
        """
        ref, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return await self.read_file(ref, file, parameters)

    async def read_file(
        self, ref: DatasetRef, file: FileInfo, parameters: Mapping[str, Any] | None = None
    ) -> Any:
        """Read a resolved dataset through its formatter (only the bytes the request needs)."""
        formatter = self.formatters.formatter(file.formatter, file.index.get(ORIGIN_KEY))
        formatter.check_request(ref.component, parameters)
        source = await self.byte_source(ref, file)
        try:
            read = functools.partial(
                formatter.read,
                source,
                file.index,
                component=ref.component,
                parameters=parameters or {},
            )
            return await self.run_blocking(read)
        finally:
            self.io_stats.add(source)
            source.close()

    async def open(
        self,
        /,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        read_ahead: int = 64 * 1024,
        collections: Collections = None,
        **kwargs: Any,
    ) -> RangeFile:
        """A seekable binary file object over the dataset's file that reads lazily.

        Hand it to astropy.io.fits or pyarrow: only the bytes they ask for are read
        (plus ``read_ahead`` bytes per miss, to keep small reads from becoming requests).
        A remote one blocks on its event loop: read it from another thread.
        """
        ref, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return (await self.byte_source(ref, file)).open(read_ahead=read_ahead)

    async def exists(
        self,
        /,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> bool:
        """True if the dataset is registered and its file can be read."""
        try:
            ref, file = await self.resolve(
                dataset_type_or_ref, data_id, collections=collections, **kwargs
            )
        except DatasetNotFoundError:
            return False
        return await self.file_present(ref, file)

    async def get_local_path(
        self,
        /,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> Path:
        """A local path of the dataset's file, for memory-mapping or external tools.

        Local repositories give the file itself; remote ones download it once into the
        client cache and verify its checksum first.
        """
        ref, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return await self.local_file(ref, file)

    async def get_uri(
        self,
        /,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        collections: Collections = None,
        **kwargs: Any,
    ) -> str:
        """Where the dataset's file lives (``file://`` or ``http(s)://``)."""
        ref, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        return await self.file_uri(ref, file)

    async def memmap(
        self,
        /,
        dataset_type_or_ref: DatasetLike,
        data_id: Mapping[str, Any] | None = None,
        *,
        hdu: str | int | None = None,
        raw: bool = False,
        collections: Collections = None,
        **kwargs: Any,
    ) -> np.memmap[Any, Any]:
        """Memory-map exactly one uncompressed FITS HDU's pixels (read-only, no copy).

        ``hdu`` (EXTNAME or position) defaults to the HDU whose pixels ``get()`` reads.
        Scaled data (BZERO/BSCALE, integer BLANK) is refused unless ``raw=True``: a map
        holds stored values, and memmap never gives numbers that differ from ``get()``'s.
        A remote butler fetches only that HDU's data bytes into its local cache.
        """
        ref, file = await self.resolve(
            dataset_type_or_ref, data_id, collections=collections, **kwargs
        )
        entry = memmap_entry(file, hdu, raw)
        path, offset = await self.local_hdu(ref, file, entry)
        return map_hdu(path, entry, offset)
