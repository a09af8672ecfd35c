"""Angiography archives (DICOM cine, videos, images) -> a de-identified pretraining pool.

See ``docs/ingest.md``. Entry points: :func:`ingest`, :func:`merge_ingest_shards`.
"""

from priormim.ingest.run import INGEST_COLUMNS, IngestSummary, ingest, merge_ingest_shards

__all__ = ["INGEST_COLUMNS", "IngestSummary", "ingest", "merge_ingest_shards"]
