"""Data manifests (CSV / Parquet, one row per training image): :mod:`priormim.io_manifest`.

The format lives at the io layer, so that the prior caches (which write manifests) need not
import the data layer; this module keeps its names importable from here.
"""

from priormim.io_manifest import (  # noqa: F401 - re-exported
    COLUMNS,
    MANIFEST_SUFFIXES,
    ManifestEntry,
    file_sha256,
    is_manifest_path,
    make_entry,
    parse_shard,
    read_manifest,
    shard_paths,
    verify_manifest,
    write_manifest,
)

__all__ = [
    "COLUMNS",
    "MANIFEST_SUFFIXES",
    "ManifestEntry",
    "file_sha256",
    "is_manifest_path",
    "make_entry",
    "parse_shard",
    "read_manifest",
    "shard_paths",
    "verify_manifest",
    "write_manifest",
]
