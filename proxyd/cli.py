"""The ``proxyd`` command."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="butler-cache")
def main() -> None:
    """Site-wide caching reverse proxy for butler repositories and other HTTP origins."""


if __name__ == "__main__":
    main()
