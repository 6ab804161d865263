"""Keeping a mirror healthy: verify, repair, prune."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from butler.butler import Butler
from butler.datastore import sha256_file
from butler.direct_butler import DirectButler
from butler.errors import ButlerError
from butler.refs import DatasetRef
from butler.remote.limits import is_disk_full
from mirror.state import MirrorState
from mirror.via import via_route


def verify_files(dest: Path) -> list[tuple[DatasetRef, str]]:
    """Re-hash every file; (ref, problem) for each missing or altered one."""
    with DirectButler(dest) as butler:
        return butler.verify()


def repair_files(
    dest: Path, refs: Sequence[DatasetRef], token: str | None, via: str | None = None
) -> tuple[int, list[tuple[DatasetRef, str]]]:
    """Fetch good copies of ``refs`` from the mirror's source (through the caching proxy
    at ``via``, its base URL, when given) and put them in place.

    Each replacement is downloaded beside its target, verified against the recorded
    checksum, then renamed over the damaged file (atomic), so a failed repair leaves the
    mirror no worse than it was.
    """
    state = MirrorState(dest)
    try:
        sources = state.sources()
    finally:
        state.close()
    if not sources:
        raise ButlerError(f"{dest} records no source to repair from")
    fixed = 0
    failed: list[tuple[DatasetRef, str]] = []
    with DirectButler(dest) as mirror:
        remaining = list(refs)
        for source_url in sources:
            if not remaining:
                break
            try:
                if "://" not in source_url:
                    source = Butler(source_url)
                else:
                    url = source_url if via is None else via_route(via, source_url)
                    source = Butler(url, token=token)
            except ButlerError as exc:
                failed += [(r, f"source {source_url} unavailable: {exc}") for r in remaining]
                remaining = []
                break
            with source:
                still: list[DatasetRef] = []
                for ref in remaining:
                    local = mirror.get_file_info(ref)
                    target = mirror.root / local.path
                    try:
                        _replace(source, ref, target, local.checksum)
                        fixed += 1
                    except (ButlerError, OSError) as exc:
                        if is_disk_full(exc):
                            # Every other file would fail the same way: say it once.
                            raise ButlerError(
                                f"the disk under {dest} is full ({exc}): {fixed} file(s) "
                                "repaired before it filled, the others left as they were; "
                                "free some space and run the same command again"
                            ) from None
                        still.append(ref)
                        failed.append((ref, str(exc)))
                remaining = still
    return fixed, failed


def _replace(source: Butler, ref: DatasetRef, target: Path, checksum: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".repair-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with source.open(ref, read_ahead=1 << 20) as remote, open(tmp, "wb") as out:
            shutil.copyfileobj(remote, out, 1 << 20)
        actual = sha256_file(tmp)
        if actual != checksum:
            raise ButlerError(f"the source's copy has checksum {actual}, expected {checksum}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def prune_datasets(
    dest: Path,
    where: str,
    dataset_types: Sequence[str],
    query_id: int | None,
    confirm: Callable[[str], bool] | None,
) -> int:
    """Remove datasets (registry rows and files in one transaction) and their provenance."""
    import uuid

    state = MirrorState(dest)
    try:
        with DirectButler(dest, writeable=True) as mirror:
            refs: list[DatasetRef] = []
            if query_id is not None:
                ids = [uuid.UUID(i) for i in state.provenance_ids(query_id)]
                present = mirror.registry.existing_ids(ids)
                refs += [mirror.resolve(_ref_by_id(mirror, i))[0] for i in ids if i in present]
            if where or dataset_types:
                names = list(dataset_types) or [t.name for t in mirror.dataset_types()]
                for name in names:
                    refs += mirror.query_datasets(name, where=where, find_first=False)
            unique = {r.id: r for r in refs}
            if not unique:
                return 0
            if confirm is not None and not confirm(f"Remove {len(unique)} dataset(s)?"):
                return 0
            removed = mirror.remove(list(unique.values()))
            state.remove_provenance(str(i) for i in unique)
            if query_id is not None:
                state.forget_query(query_id)
            return removed
    finally:
        state.close()


def _ref_by_id(mirror: DirectButler, dataset_id: object) -> DatasetRef:
    import uuid

    assert isinstance(dataset_id, uuid.UUID)
    found = mirror.registry.get_dataset(dataset_id)
    assert found is not None
    return found[0]
