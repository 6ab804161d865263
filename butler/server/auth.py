"""Bearer tokens for ``butler serve``: who may read and who may write.

The tokens file is YAML::

    tokens:
      - name: alice                # shown in logs and errors; the token itself never is
        token: "long random string"
        scopes: [read, write]
      - name: pipeline
        sha256: "<hex sha256 of the token>"   # to keep plain tokens out of the file
        scopes: [read]
      - name: survey-a
        token: "..."
        collections: ["surveyA/*"]  # glob patterns: only these collections (see
                                    # butler.server.collection_access); absent: all

Tokens are compared by their SHA-256 digests in constant time.

The file is read again when it changes (:class:`ReloadingTokens`, checked on each request
by its size, modification time and inode), so an operator revokes a token by removing its
entry: no restart, and no request answered with the old list after the new one is in place.
A changed file that is invalid is refused with an error in the log, and the previous list
stays in force (a half-written file must not open or close the repository).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from butler.errors import RepositoryConfigError
from butler.server.collection_access import CollectionRule, parse_patterns

log = logging.getLogger("butler.server")
SCOPES = ("read", "write")
FILE_KEYS = ("tokens",)
ENTRY_KEYS = ("name", "token", "sha256", "scopes", "collections")


def _refuse_unknown(data: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
    """Refuse keys this server does not know: an operator who wrote one (a limit, an
    expiry) must not believe it is in force when it is silently ignored."""
    unknown = [str(key) for key in data if key not in allowed]
    if unknown:
        raise RepositoryConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; the allowed keys are "
            f"{', '.join(allowed)} (nothing else is enforced: remove or fix them)"
        )


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]
    collections: tuple[str, ...] | None = None
    """Glob patterns of the collections this token may use; None: all of them."""

    @property
    def rule(self) -> CollectionRule:
        return CollectionRule(self.collections, self.name)


class TokenStore:
    def __init__(self, entries: Mapping[str, Principal]) -> None:
        self._by_digest = dict(entries)

    @classmethod
    def empty(cls) -> TokenStore:
        return cls({})

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise RepositoryConfigError(f"cannot read tokens file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise RepositoryConfigError(f"tokens file {path} is not valid YAML: {exc}") from exc
        entries: dict[str, Principal] = {}
        if isinstance(data, Mapping):
            _refuse_unknown(data, FILE_KEYS, f"{path}")
        items = (data or {}).get("tokens") if isinstance(data, Mapping) else None
        if not isinstance(items, list):
            raise RepositoryConfigError(
                f"{path}: expected a 'tokens:' list (see butler serve --help)"
            )
        for number, item in enumerate(items, 1):
            entries.update([cls._parse(path, number, item)])
        return cls(entries)

    @staticmethod
    def _parse(path: Path, number: int, item: Any) -> tuple[str, Principal]:
        where = f"{path}: token entry {number}"
        if not isinstance(item, Mapping) or not item.get("name"):
            raise RepositoryConfigError(f"{where} needs a 'name'")
        _refuse_unknown(item, ENTRY_KEYS, where)
        scopes = item.get("scopes", ["read"])
        if not isinstance(scopes, list) or not set(scopes) <= set(SCOPES):
            raise RepositoryConfigError(f"{where}: scopes must be a list drawn from {SCOPES}")
        if "token" in item:
            token = str(item["token"])
            if len(token) < 16:
                raise RepositoryConfigError(f"{where}: tokens must be at least 16 characters")
            digest = digest_token(token)
        elif "sha256" in item:
            digest = str(item["sha256"]).lower()
            if len(digest) != 64:
                raise RepositoryConfigError(f"{where}: sha256 must be 64 hex digits")
        else:
            raise RepositoryConfigError(f"{where} needs 'token' or 'sha256'")
        collections = parse_patterns(item.get("collections"), where)
        return digest, Principal(str(item["name"]), frozenset(scopes), collections)

    def identify(self, token: str) -> Principal | None:
        digest = digest_token(token)
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        return None

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)


class ReloadingTokens:
    """The tokens of a file, read again whenever the file changes (see the module doc)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.store = TokenStore.empty()
        if path is not None:
            self._stamp = self._stat()
            self.store = TokenStore.load(path)  # at start, an invalid file is an error

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> TokenStore:
        """The tokens in force now: the file's, read again if it changed since last time."""
        if self.path is None:
            return self.store
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return self.store  # a file removed for a moment (an editor's save) changes nothing
        self._stamp = stamp
        try:
            self.store = TokenStore.load(self.path)
        except RepositoryConfigError as exc:
            log.error("tokens file changed but was not reloaded (the previous one stays): %s", exc)
        else:
            log.info("tokens file %s reloaded: %d token(s)", self.path, len(self.store))
        return self.store


def digest_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
