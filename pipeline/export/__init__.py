"""Exports of a finished output folder for training code: WebDataset, Hugging Face imagefolder, Parquet."""

from .errors import ExportError
from .exporter import DEFAULT_SHARD_SIZE, FORMATS, INDEX, ExportSummary, export
from .shards import OutputFile

__all__ = ["DEFAULT_SHARD_SIZE", "FORMATS", "INDEX", "ExportError", "ExportSummary", "OutputFile", "export"]
