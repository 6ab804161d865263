"""A local LSST butler repository (lsst-daf-butler's, ``butler.yaml`` + SQLite registry) as
the source of a pull.

Read with lsst-daf-butler itself (the ``lsst`` extra), not with SQL on its registry: the
LSST registry's tables are an implementation detail that changes between its releases
(dataset tables per dimension group, collection summaries, manager versions), while its
query system is the contract its users write ``--where`` against. So the user's
``--where`` and ``--bind`` are the LSST butler's own query expression language, passed to
``Butler.query_datasets`` as they are (never formatted into SQL here).

What the source answers, in this project's terms: each dataset as a :class:`DatasetRef` of
ours (same UUID, data ID in this project's universe, storage class and formatter decided by
:func:`butler.lsst.storage.our_storage`) with the local file that holds it, the dimension
records its data ID carries (converted by :func:`butler.lsst.records.convert_record`), and
its RUN and CHAINED collections. The LSST datastore usually records no checksum, so a
file's SHA-256 is computed as it is copied (:class:`DafFetcher`) and recorded with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from butler.direct_butler import DirectButler
from butler.errors import RepositoryConfigError
from butler.lsst.contents import LsstFormatError
from butler.lsst.importer import required_dimensions
from butler.lsst.records import complete_records, convert_record
from butler.lsst.storage import our_storage
from butler.refs import DataCoordinate, DatasetRef, DatasetType, FileInfo
from butler.repo_config import CONFIG_NAME
from butler.universe import DimensionUniverse, default_universe_path
from mirror.plan import Item
from mirror.transfer import CHUNK, LocalFetcher, Progress, TransferError

__all__ = ["DafFetcher", "DafSource", "daf_config"]

EXTRA_HINT = "pip install 'butler-cache[lsst]'"


def daf_config(path: Path) -> Path | None:
    """The LSST butler config of ``path`` (a repository directory or its config file), or
    None when ``path`` is not an LSST butler repository.

    Told apart from this project's ``butler.yaml`` by its keys: the LSST butler's names a
    ``registry`` and a ``datastore``; ours has a ``format_version`` and neither.
    """
    config = path / CONFIG_NAME if path.is_dir() else path
    if not config.is_file():
        return None
    try:
        text = config.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = yaml.safe_load(text)
        keys = set(data) if isinstance(data, Mapping) else set()
    except yaml.YAMLError:
        # The LSST butler's configs may use its own tags (``!include``); the top-level keys
        # still say what the file is.
        keys = set(re.findall(r"^([A-Za-z_]+):", text, flags=re.MULTILINE))
    if {"registry", "datastore"} <= keys and "format_version" not in keys:
        return config
    return None


def _plain(value: Any) -> Any:
    """A record field as the LSST butler's zip index writes it: a Timespan as its
    ``[begin, end]`` TAI nanoseconds (exact), a region as its hex encoding."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    nsec = getattr(value, "nsec", None)
    if isinstance(nsec, tuple):
        return list(nsec)
    encode = getattr(value, "encode", None)
    if callable(encode):
        encoded = encode()
        if isinstance(encoded, bytes):
            return encoded.hex()
    return value


class DafSource:
    """An LSST butler repository on this machine, asked through lsst-daf-butler."""

    def __init__(self, config: Path) -> None:
        try:
            from lsst.daf.butler import Butler
        except ImportError as exc:
            raise RepositoryConfigError(
                f"{config} is an LSST butler repository; reading it needs lsst-daf-butler "
                f"(the lsst extra: {EXTRA_HINT})"
            ) from exc
        self.config = config
        self.root = config.parent
        try:
            self._butler = Butler.from_config(str(config), writeable=False)
        except Exception as exc:  # its errors have no common base; say which repository
            raise RepositoryConfigError(
                f"cannot open the LSST butler repository {config}: {exc}"
            ) from exc
        self._universe = DimensionUniverse.from_file(default_universe_path())
        version = int(self._butler.dimensions.version)
        ours = self._universe.daf_butler_version or 0
        if version > ours:
            self.close()
            raise RepositoryConfigError(
                f"{config} uses the LSST dimension universe version {version}; this butler "
                f"holds up to version {ours}"
            )
        self._version = version
        self._records: dict[uuid.UUID, list[tuple[str, dict[str, Any]]]] = {}

    @property
    def universe(self) -> DimensionUniverse:
        """The universe a new mirror is made with: this project's, which covers the LSST
        butler's (the source's own universe is checked against it when opened)."""
        return self._universe

    def close(self) -> None:
        self._butler.close()

    def query_datasets_with_files(
        self,
        dataset_type: str,
        collections: Sequence[str] | None = None,
        where: str = "",
        bind: Mapping[str, Any] | None = None,
        *,
        find_first: bool = True,
    ) -> list[tuple[DatasetRef, FileInfo]]:
        """The datasets the LSST butler's own query finds, with their local files."""
        from lsst.daf.butler import MissingDatasetTypeError

        try:
            refs = self._butler.query_datasets(
                dataset_type,
                collections=list(collections) if collections else "*",
                where=where,
                bind=dict(bind or {}),
                find_first=find_first and bool(collections),
                with_dimension_records=True,
                explain=False,
                limit=None,
            )
        except MissingDatasetTypeError as exc:
            raise RepositoryConfigError(f"{self.config}: {exc}") from exc
        except Exception as exc:
            # The LSST query system's errors (a bad expression, an unknown collection) have
            # no common base: said with the repository and the expression.
            raise RepositoryConfigError(
                f"{self.config}: the LSST butler's query of {dataset_type!r} "
                f"(--where {where!r}) failed: {exc}"
            ) from exc
        return [self._dataset(ref) for ref in refs]

    def _dataset(self, ref: Any) -> tuple[DatasetRef, FileInfo]:
        where = f"{self.config}: dataset {ref.id} of {ref.datasetType.name!r}"
        try:
            uri = self._butler.getURI(ref)
        except FileNotFoundError as exc:
            raise LsstFormatError(f"{where} has no file in the LSST datastore") from exc
        except RuntimeError as exc:  # a disassembled composite has one file per component
            raise LsstFormatError(
                f"{where} is stored as several files (a disassembled composite), which is "
                "not carried over"
            ) from exc
        if uri.scheme not in ("", "file"):
            raise LsstFormatError(f"{where}: its file {uri} is not local")
        path = Path(uri.ospath)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise LsstFormatError(f"{where}: its file is missing: {exc}") from exc
        daf_type = ref.datasetType
        try:
            storage_class, formatter = our_storage(daf_type.storageClass_name, path, where)
        except LsstFormatError as exc:
            # The importer's reason, with what to do in a pull's terms.
            reason = str(exc).rpartition(";")[0] or str(exc)
            raise LsstFormatError(
                f"{reason}; leave dataset type {daf_type.name!r} out of --dataset-type"
            ) from None
        names = [str(n) for n in daf_type.dimensions.names]
        required = required_dimensions(self._universe, names)
        implied = tuple(n for n in self._universe.dimensions if n in names and n not in required)
        ours = DatasetType(daf_type.name, required, storage_class, formatter, implied)
        values = {str(k): v for k, v in ref.dataId.mapping.items()}
        data_id = DataCoordinate(values, required)
        self._records[ref.id] = self._converted_records(ref.dataId, where)
        file = FileInfo(
            dataset_id=ref.id,
            path=str(path),
            size=size,
            checksum="",  # computed as the file is copied (DafFetcher)
            formatter=formatter,
            storage_class=storage_class,
            index={},
        )
        return DatasetRef(ref.id, ours, data_id, ref.run), file

    def _converted_records(self, data_id: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for element in data_id.dimensions.elements:
            record = data_id.records[element]
            if record is None:
                continue
            fields = {k: _plain(v) for k, v in record.toDict().items()}
            converted, extra = convert_record(
                self._universe, str(element), fields, self._version, where
            )
            out.append((str(element), converted))
            out += extra
        return out

    def copy_definitions(self, mirror: DirectButler, items: Iterable[Item]) -> None:
        """The dataset types and dimension records ``items`` need, in one transaction."""
        items = list(items)
        records: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for item in items:
            for element, row in self._records.get(item.ref.id, []):
                if row not in records[element]:
                    records[element].append(row)
        completed = complete_records(self._universe, dict(records))
        types = {item.ref.dataset_type.name: item.ref.dataset_type for item in items}
        with mirror.transaction():
            for element in mirror.universe.names:
                if completed.get(element):
                    mirror.insert_dimension_records(
                        element, *completed[element], skip_existing=True
                    )
            for name, dataset_type in types.items():
                mirror.register_dataset_type(
                    name,
                    dataset_type.dimensions,
                    dataset_type.storage_class,
                    dataset_type.formatter,
                )

    def query_collections(self) -> list[dict[str, Any]]:
        """The RUN and CHAINED collections (the kinds that exist here), chains with the
        members of those kinds."""
        infos = list(self._butler.collections.query_info("*"))
        kinds = {info.name: info.type.name for info in infos}
        return [
            {
                "name": info.name,
                "type": kinds[info.name],
                "children": [c for c in info.children if kinds.get(c) in ("RUN", "CHAINED")],
            }
            for info in infos
            if kinds[info.name] in ("RUN", "CHAINED")
        ]

    def get_collection_chain(self, name: str) -> list[str]:
        for info in self.query_collections():
            if info["name"] == name:
                return list(info["children"])
        return []


class DafFetcher(LocalFetcher):
    """Copies an LSST butler's files, hashing them on the way: the SHA-256 recorded with a
    file is that of the bytes written, and the copy is refused if the source file changed
    size or modification time while it was read (a writer in the LSST repository).

    A partial copy left by an interrupted pull is started over rather than appended to: with
    no checksum recorded at the source, its bytes could only be trusted by reading the
    source's again, which costs what copying them does.
    """

    def __init__(self) -> None:
        super().__init__(Path("/"))
        self.checksums: dict[uuid.UUID, str] = {}

    async def fetch(self, item: Item, target: Path, progress: Progress) -> None:
        source = Path(item.file.path)

        def copy() -> str:
            try:
                before = source.stat()
            except OSError as exc:
                raise TransferError(f"{source} cannot be read: {exc}") from exc
            digest = hashlib.sha256()
            written = 0
            with open(source, "rb") as src, open(target, "wb") as dst:
                while block := src.read(CHUNK):
                    digest.update(block)
                    dst.write(block)
                    written += len(block)
            after = source.stat()
            if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
                written != item.file.size
            ):
                target.unlink(missing_ok=True)
                raise TransferError(
                    f"{source} changed since it was planned ({item.file.size} bytes planned, "
                    f"{written} read); run the pull again"
                )
            return "sha256:" + digest.hexdigest()

        self.checksums[item.ref.id] = await asyncio.to_thread(copy)
        progress(item.file.size)
