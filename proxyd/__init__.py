"""proxyd: the site-wide caching reverse proxy for butler repositories (see DESIGN.md)."""
