"""What a mirror remembers beside its repository: source, recorded queries, provenance.

Kept in ``mirror.sqlite3`` next to the repository's own registry (sqlite-utils), so the
mirror stays an ordinary repository that any butler opens, and ``mirror update`` knows what
to re-run.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_NAME = "mirror.sqlite3"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RecordedQuery:
    id: int
    source: str
    dataset_types: tuple[str, ...]
    collections: tuple[str, ...]
    where: str
    bind: dict[str, Any]
    created: str
    last_pull: str | None

    def describe(self) -> str:
        parts = [", ".join(self.dataset_types)]
        if self.collections:
            parts.append(f"in {', '.join(self.collections)}")
        if self.where:
            parts.append(f"where {self.where}")
        return " ".join(parts)


class MirrorState:
    def __init__(self, root: Path) -> None:
        self.path = Path(root) / STATE_NAME
        # Used from the pull's commit thread too; calls never overlap (one committer).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        # Like the registry's: a commit is not flushed on its own but at the next checkpoint
        # (a power cut may lose the last commits, never the database's consistency).
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 30000")
        # Imported here, like the registry's (see butler.registry._database).
        import sqlite_utils

        self.db = sqlite_utils.Database(conn)
        self._create()

    def _create(self) -> None:
        db = self.db
        if "query" not in db.table_names():
            db.table("query").create(
                {
                    "id": int,
                    "source": str,
                    "dataset_types": str,
                    "collections": str,
                    "where_expr": str,
                    "bind": str,
                    "created": str,
                    "last_pull": str,
                },
                pk="id",
            )
        if "provenance" not in db.table_names():
            db.table("provenance").create(
                {
                    "dataset_id": str,
                    "query_id": int,
                    "source": str,
                    "fetched_at": str,
                    "size": int,
                    "checksum": str,
                },
                pk="dataset_id",
            )
            db.table("provenance").create_index(["query_id"])
        if "pull" not in db.table_names():
            db.table("pull").create(
                {
                    "id": int,
                    "source": str,
                    "started": str,
                    "finished": str,
                    "status": str,
                    "downloaded": int,
                    "skipped": int,
                    "failed": int,
                    "bytes": int,
                },
                pk="id",
            )

    def close(self) -> None:
        self.db.conn.close()

    # -- queries --------------------------------------------------------------------------

    def record_query(
        self,
        source: str,
        dataset_types: Sequence[str],
        collections: Sequence[str],
        where: str,
        bind: Mapping[str, Any],
    ) -> int:
        """The id of this query (recorded once; the same query again gets the same id)."""
        row = {
            "source": source,
            "dataset_types": json.dumps(sorted(dataset_types)),
            "collections": json.dumps(list(collections)),
            "where_expr": where,
            "bind": json.dumps(dict(bind), sort_keys=True),
        }
        existing = list(
            self.db.query(
                "SELECT id FROM query WHERE source = :source AND dataset_types = :dataset_types "
                "AND collections = :collections AND where_expr = :where_expr AND bind = :bind",
                row,
            )
        )
        if existing:
            return int(existing[0]["id"])
        table = self.db.table("query")
        table.insert({**row, "created": now_iso(), "last_pull": None})
        return int(table.last_pk or 0)

    def queries(self) -> list[RecordedQuery]:
        return [
            RecordedQuery(
                id=int(r["id"]),
                source=r["source"],
                dataset_types=tuple(json.loads(r["dataset_types"])),
                collections=tuple(json.loads(r["collections"])),
                where=r["where_expr"] or "",
                bind=json.loads(r["bind"] or "{}"),
                created=r["created"],
                last_pull=r["last_pull"],
            )
            for r in self.db.query("SELECT * FROM query ORDER BY id")
        ]

    def forget_query(self, query_id: int) -> None:
        self.db.execute("DELETE FROM query WHERE id = ?", [query_id])

    def mark_pulled(self, query_id: int) -> None:
        self.db.execute("UPDATE query SET last_pull = ? WHERE id = ?", [now_iso(), query_id])

    # -- provenance and pulls ---------------------------------------------------------------

    def add_provenance(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.db.table("provenance").upsert_all(
            [{**r, "fetched_at": now_iso()} for r in rows], pk="dataset_id"
        )

    def provenance_ids(self, query_id: int) -> list[str]:
        return [
            r["dataset_id"]
            for r in self.db.query(
                "SELECT dataset_id FROM provenance WHERE query_id = ?", [query_id]
            )
        ]

    def remove_provenance(self, dataset_ids: Iterable[str]) -> None:
        ids = list(dataset_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self.db.execute(
                f"DELETE FROM provenance WHERE dataset_id IN ({', '.join('?' for _ in chunk)})",
                chunk,
            )

    def start_pull(self, source: str) -> int:
        table = self.db.table("pull")
        table.insert(
            {
                "source": source,
                "started": now_iso(),
                "status": "running",
                "downloaded": 0,
                "skipped": 0,
                "failed": 0,
                "bytes": 0,
            }
        )
        return int(table.last_pk or 0)

    def finish_pull(
        self, pull_id: int, status: str, downloaded: int, skipped: int, failed: int, nbytes: int
    ) -> None:
        self.db.table("pull").update(
            pull_id,
            {
                "finished": now_iso(),
                "status": status,
                "downloaded": downloaded,
                "skipped": skipped,
                "failed": failed,
                "bytes": nbytes,
            },
        )

    def last_pull(self) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM pull ORDER BY id DESC LIMIT 1"))
        return dict(rows[0]) if rows else None

    def sources(self) -> list[str]:
        return [r["source"] for r in self.db.query("SELECT DISTINCT source FROM query")]
