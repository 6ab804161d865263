"""The README works as written (issue 19, item 6): its library example runs as is in a fresh
interpreter, and every command and option it shows for ``butler``, ``proxyd`` and ``mirror``
exists (a renamed flag breaks this test, not a reader's first try)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = {"butler": "butler.cli.main", "proxyd": "proxyd.cli", "mirror": "mirror.cli"}


def code_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language, body) of every fenced block."""
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        yield match.group(1), match.group(2)


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def command_lines(text: str) -> Iterator[str]:
    """Each invocation of our commands the README shows: lines of code blocks (joined at
    ``\\``, comments dropped; a two-column listing split into its columns) and inline code
    spans that start with a command name."""
    for language, body in code_blocks(text):
        if language not in ("", "bash") or "──" in body:  # not the drawing
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            line = line.split(" #", 1)[0]
            for column in re.split(r"\s{3,}", line.strip()):
                if column.split(" ", 1)[0] in COMMANDS:
                    yield column
    for span in re.findall(r"`([^`\n]+)`", text):
        if span.split(" ", 1)[0] in COMMANDS and " " in span:
            yield span


def invocation(line: str) -> tuple[str, list[str], list[str]]:
    """(command, subcommands, options) of a README line. ``a|b|c`` lists alternative
    subcommands (``verify [--repair]|prune``: an option of one of them in brackets);
    brackets mark optional parts."""
    words = shlex.split(line)
    command, rest = words[0], words[1:]
    alternatives = ""
    while rest and (
        (not alternatives and not rest[0].startswith(("-", "[")))
        or re.fullmatch(r"\[--[a-z0-9-]+\]\|.*", rest[0])
    ):
        alternatives += rest.pop(0)
    options = re.findall(r"\[(--[a-z][a-z0-9-]*)\]", alternatives)
    subcommands = re.sub(r"\[[^\]]*\]", "", alternatives).split("|") if alternatives else []
    for word in rest:
        match = re.fullmatch(r"\[?(--[a-z][a-z0-9-]*)(=.*)?\]?", word)
        if match:
            options.append(match.group(1))
    return command, subcommands, options


@cache
def help_text(command: str, subcommand: str) -> tuple[int, str]:
    done = subprocess.run(  # noqa: S603 - our interpreter, README words
        [sys.executable, "-m", COMMANDS[command], *([subcommand] if subcommand else []), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_the_readme_names_commands_to_check() -> None:
    lines = list(command_lines(README.read_text()))
    named = {invocation(line)[0] for line in lines}
    assert named == set(COMMANDS)
    assert len(lines) >= 25  # the butler listing alone has 17


def test_every_command_and_option_in_the_readme_exists() -> None:
    missing: list[str] = []
    for line in command_lines(README.read_text()):
        command, subcommands, options = invocation(line)
        helps = []
        for subcommand in subcommands or [""]:
            status, text = help_text(command, subcommand)
            if status != 0:
                missing.append(f"{command} {subcommand}: no such command ({line!r})")
            helps.append(text)
        for option in options:
            if not any(re.search(rf"{re.escape(option)}\b", text) for text in helps):
                missing.append(f"{command} {'|'.join(subcommands)}: no option {option} ({line!r})")
    assert missing == []


def test_the_check_notices_a_wrong_option() -> None:
    """The check above can fail: a flag nobody defined is reported."""
    command, subcommands, options = invocation("mirror pull URL --dest D [--no-such-flag]")
    assert (command, subcommands, options) == ("mirror", ["pull"], ["--dest", "--no-such-flag"])
    status, text = help_text("mirror", "pull")
    assert status == 0
    assert "--dest" in text
    assert "--no-such-flag" not in text


def test_the_library_example_runs_as_written(tmp_path: Path) -> None:
    """The "Using the library" block, unchanged, in a fresh interpreter in an empty
    directory; then what it read is checked against what it wrote."""
    blocks = [b for lang, b in code_blocks(section(README.read_text(), "Using the library"))]
    assert len(blocks) == 1
    check = """
import json as _json
print(_json.dumps({
    "cut": list(cut.data.shape),
    "cut_first": float(cut.data[0, 0]),
    "refs": len(refs),
    "same_pixels": bool((pix == image.data).all()),
    "lazy_sum": float(lazy.data.sum().compute()) if hasattr(lazy.data, "compute") else None,
    "var": float(var.sum()),
    "hdr": type(hdr).__name__,
    "img_equal": bool((img.data == image.data).all()),
}))
"""
    done = subprocess.run(  # noqa: S603 - our interpreter, the README's code
        [sys.executable, "-W", "default", "-c", blocks[0] + check],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    pixels = np.arange(512 * 512, dtype="float32").reshape(512, 512)  # as the README makes it
    assert result["cut"] == [100, 100]
    assert result["cut_first"] == float(pixels[200, 100])  # y0=200, x0=100
    assert result["refs"] == 1
    assert result["same_pixels"] is True
    assert result["img_equal"] is True
    assert result["var"] == pytest.approx(512 * 512)
    assert result["hdr"] == "Header"
    assert (tmp_path / "repo" / "registry.sqlite3").is_file()
