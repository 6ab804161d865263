"""The repository HTTP server behind ``butler serve``."""
