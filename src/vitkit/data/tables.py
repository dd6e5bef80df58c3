"""Rows of Arrow tables on disk, read in sequence: parquet files, and the Arrow files that
Hugging Face datasets' `save_to_disk` writes. Only the columns asked for are read; a parquet
file's rows before the first one wanted are skipped a row group at a time, undecoded, and only the
rows wanted become Python objects. pyarrow comes with the `hf` extra: import this module only for
such data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SUFFIXES = (".parquet", ".arrow")
BATCH_ROWS = 256
ARROW_FILE_MAGIC = b"ARROW1"  # the IPC file format's first bytes (save_to_disk writes the stream format)


def describe(path: Path) -> tuple[pa.Schema, int]:
    """A file's schema and row count, from its metadata (parquet) or its batches' headers (Arrow,
    memory-mapped: no row is read)."""
    if path.suffix == ".parquet":
        with pq.ParquetFile(path) as parquet:
            return parquet.schema_arrow, parquet.metadata.num_rows
    with pa.memory_map(str(path)) as source:
        reader = _arrow_reader(source)
        return reader.schema, sum(batch.num_rows for batch in reader)


def column(path: Path, name: str) -> Iterator:
    """One column's values, batch by batch."""
    for batch in _batches(path, [name], 0, None):
        yield from batch.column(0).to_pylist()


def rows(path: Path, columns: list[str], first: int = 0, last: int | None = None) -> Iterator[tuple]:
    """The values of `columns` in rows first..last-1 (to the end: last None), row by row."""
    for batch in _batches(path, columns, first, last):
        yield from zip(*(batch.column(name).to_pylist() for name in columns), strict=True)


def _batches(path: Path, columns: list[str], first: int, last: int | None) -> Iterator[pa.RecordBatch]:
    """Rows first..last-1 of `columns` as batches of at most BATCH_ROWS rows (a parquet file's
    reading starts at the row group holding `first`)."""
    if path.suffix == ".parquet":
        with pq.ParquetFile(path) as parquet:
            start, group = 0, 0
            while group < parquet.num_row_groups and start + parquet.metadata.row_group(group).num_rows <= first:
                start += parquet.metadata.row_group(group).num_rows
                group += 1
            groups = range(group, parquet.num_row_groups)
            yield from _within(parquet.iter_batches(BATCH_ROWS, groups, columns), start, first, last)
        return
    with pa.memory_map(str(path)) as source:
        yield from _within((b.select(columns) for b in _arrow_reader(source)), 0, first, last)


def _within(batches: Iterator[pa.RecordBatch], start: int, first: int, last: int | None) -> Iterator[pa.RecordBatch]:
    """The rows first..last-1 of batches whose first row is row `start`, sliced (without a copy)
    into pieces of at most BATCH_ROWS."""
    for batch in batches:
        low, high = max(first - start, 0), batch.num_rows if last is None else min(last - start, batch.num_rows)
        for offset in range(low, high, BATCH_ROWS):
            yield batch.slice(offset, min(BATCH_ROWS, high - offset))
        start += batch.num_rows
        if last is not None and start >= last:
            return


def _arrow_reader(source: pa.MemoryMappedFile) -> pa.RecordBatchReader:
    """An Arrow file in the IPC stream format (as `save_to_disk` writes it) or the file format."""
    if source.read(len(ARROW_FILE_MAGIC)) != ARROW_FILE_MAGIC:
        source.seek(0)
        return pa.ipc.open_stream(source)
    source.seek(0)
    file = pa.ipc.open_file(source)
    return pa.RecordBatchReader.from_batches(file.schema, (file.get_batch(i) for i in range(file.num_record_batches)))
