"""Ingest of raw files from any telescope: headers -> translator -> dimension records and
``raw`` datasets whose offset index carries the instrument's plane layout."""

from butler.ingest.run import FileOutcome, RawIngestOptions, ingest_raws

__all__ = ["FileOutcome", "RawIngestOptions", "ingest_raws"]
