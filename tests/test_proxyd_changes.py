"""proxyd.changes: the marker through which processes sharing a cache see each other's changes."""

from __future__ import annotations

from pathlib import Path

from proxyd.changes import SIZE, ChangeMarker


def test_a_change_is_seen_once_by_every_other_process_and_not_by_its_maker(
    tmp_path: Path,
) -> None:
    path = tmp_path / "purged"
    markers = maker, other, third = ChangeMarker(path), ChangeMarker(path), ChangeMarker(path)

    def seen() -> list[bool]:
        return [marker.changed() for marker in markers]

    assert seen() == [False, False, False]
    maker.mark()
    assert seen() == [False, True, True]
    assert seen() == [False, False, False]  # looking resets it
    other.mark()
    maker.mark()  # two changes before the others look: seen, once
    assert seen() == [False, True, True]
    assert seen() == [False, False, False]
    for marker in markers:
        marker.close()


def test_an_empty_marker_left_by_an_older_version_is_extended(tmp_path: Path) -> None:
    path = tmp_path / "purged"
    path.touch()
    marker, other = ChangeMarker(path), ChangeMarker(path)
    assert path.stat().st_size == SIZE
    marker.mark()
    assert other.changed()
    marker.close()
    other.close()
