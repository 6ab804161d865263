"""Text and HTML renderings of a query: its totals and first rows (pure, no I/O)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from butler.units import human_size


@dataclass(frozen=True)
class QueryView:
    """What a query shows: everything computed before rendering."""

    dataset_type: str
    repository: str
    where: str
    count: int | None
    size: int | None
    columns: Sequence[str]
    rows: Sequence[Mapping[str, Any]]
    error: str | None = None

    @property
    def headline(self) -> str:
        if self.error is not None:
            return f"{self.dataset_type} query on {self.repository}: {self.error}"
        assert self.count is not None
        assert self.size is not None
        noun = "dataset" if self.count == 1 else "datasets"
        return (
            f"{self.dataset_type} query on {self.repository}: {self.count} {noun}, "
            f"{human_size(self.size)}"
        )

    @property
    def more(self) -> int:
        return max(0, (self.count or 0) - len(self.rows))


def render_text(view: QueryView) -> str:
    lines = [view.headline, f"where: {view.where or '(everything)'}"]
    if view.rows:
        table = [list(view.columns)] + [
            [str(row.get(c, "")) for c in view.columns] for row in view.rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(view.columns))]
        for row in table:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    if view.more:
        lines.append(f"  ... and {view.more} more")
    return "\n".join(lines)


def render_html(view: QueryView) -> str:
    esc = html.escape
    parts = [
        "<div class='butler-query'>",
        f"<p><b>{esc(view.headline)}</b><br><code>where: {esc(view.where or '(everything)')}"
        "</code></p>",
    ]
    if view.rows:
        parts.append("<table><thead><tr>")
        parts += [f"<th>{esc(c)}</th>" for c in view.columns]
        parts.append("</tr></thead><tbody>")
        for row in view.rows:
            cells = "".join(f"<td>{esc(str(row.get(c, '')))}</td>" for c in view.columns)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table>")
    if view.more:
        parts.append(f"<p>… and {view.more} more</p>")
    parts.append("</div>")
    return "".join(parts)
