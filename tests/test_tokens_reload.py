"""The tokens file is read again when it changes (issue 18, item 1: revocation), and a
broken new file leaves the previous tokens in force."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from butler.server.auth import ReloadingTokens

A = "token-a-0123456789abcdef"
B = "token-b-0123456789abcdef"


def entries(*names_tokens: tuple[str, str], extra: str = "") -> str:
    lines = ["tokens:"]
    for name, token in names_tokens:
        lines += [f"  - name: {name}", f'    token: "{token}"', "    scopes: [read]"]
    return "\n".join(lines) + "\n" + extra


def test_removed_tokens_stop_working_and_broken_files_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(entries(("a", A), ("b", B)))
    tokens = ReloadingTokens(path)
    assert tokens.current().identify(B) is not None

    path.write_text(entries(("a", A)))  # b revoked
    assert tokens.current().identify(B) is None
    assert tokens.current().identify(A) is not None

    # A file being written (invalid for now) changes nothing; the log says why.
    with caplog.at_level(logging.ERROR, logger="butler.server"):
        path.write_text(entries(("a", A), extra="  - name: half-writ"))
        assert tokens.current().identify(A) is not None
    assert "not reloaded" in caplog.text
    assert A not in caplog.text

    # Replaced atomically by a new file (a new inode): read at once.
    new = tmp_path / "tokens.new"
    new.write_text(entries(("b", B)))
    new.replace(path)
    assert tokens.current().identify(A) is None
    assert tokens.current().identify(B) is not None
    # Removed for a moment: the tokens in force stay.
    path.unlink()
    assert tokens.current().identify(B) is not None
