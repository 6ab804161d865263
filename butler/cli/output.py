"""Output shared by the ``butler``, ``mirror`` and ``proxyd`` commands: sizes for humans in
one style, and tables that keep whole values when read by another program."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import click

from butler.units import human_size

__all__ = ["FORMATS", "chosen_format", "format_option", "human_size", "print_rows"]

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "json", "csv")


def format_option(func: F) -> F:
    """``--format table|json|csv`` and its old spelling ``--json`` (kept for scripts)."""
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (the same as --format json)."
    )(func)
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table (plain columns when not a terminal), json or csv.",
    )(func)


def chosen_format(output_format: str, as_json: bool) -> str:
    return "json" if as_json else output_format


def print_rows(
    rows: Iterable[Mapping[str, Any]], output_format: str, title: str = "", header: bool = True
) -> None:
    """Rows as a table (boxed on a terminal, plain columns otherwise, with the column names
    unless ``header`` is false), JSON or CSV.

    Nothing is cut: a table piped to another program used to be laid out for 80 columns
    and its long values (paths, IDs) shortened with an ellipsis.
    """
    rows = list(rows)
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    if output_format == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        click.echo(out.getvalue(), nl=False)
        return
    if not rows:
        click.echo(f"No {title or 'results'}.")
        return
    if not sys.stdout.isatty():
        click.echo(plain_table(columns if header else None, cells))
        return
    # Imported here: most commands print no table, and rich costs each start ~50 ms.
    from rich.console import Console
    from rich.table import Table as RichTable

    table = RichTable(title=title or None)
    for column in columns:
        table.add_column(column)
    for row_cells in cells:
        table.add_row(*row_cells)
    Console(soft_wrap=True).print(table)


def plain_table(columns: list[str] | None, cells: list[list[str]]) -> str:
    """Columns padded to their widest value, separated by two spaces; no value shortened."""
    lines = cells if columns is None else [columns, *cells]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))] if lines else []
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
