"""The ``mirror`` command."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="butler-cache")
def main() -> None:
    """Pre-fetch the results of a butler query into a local repository for offline use."""


if __name__ == "__main__":
    main()
