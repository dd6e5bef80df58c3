"""Rows of Arrow tables on disk, read in sequence: parquet files, and the Arrow files that
Hugging Face datasets' `save_to_disk` writes. Only the columns asked for are read, and a parquet
file's rows before the first one wanted are skipped a row group at a time, undecoded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SUFFIXES = (".parquet", ".arrow")
BATCH_ROWS = 256


def schema(path: Path) -> pa.Schema:
    if path.suffix == ".parquet":
        return pq.read_schema(path)
    with pa.memory_map(str(path)) as source:
        return _arrow_reader(source).schema


def count_rows(path: Path) -> int:
    """A file's rows, from its metadata (parquet) or its batches' headers (Arrow, memory-mapped:
    no row is read)."""
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with pa.memory_map(str(path)) as source:
        return sum(batch.num_rows for batch in _arrow_reader(source))


def column(path: Path, name: str) -> Iterator:
    """One column's values, batch by batch."""
    for batch, _ in _batches(path, [name], 0):
        yield from batch.column(0).to_pylist()


def rows(path: Path, columns: list[str], first: int = 0, last: int | None = None) -> Iterator[tuple]:
    """The values of `columns` in rows first..last-1 (to the end: last None), row by row."""
    for batch, start in _batches(path, columns, first):
        values = [batch.column(name).to_pylist() for name in columns]
        for offset, row in enumerate(zip(*values, strict=True)):
            if last is not None and start + offset >= last:
                return
            if start + offset >= first:
                yield row


def _batches(path: Path, columns: list[str], first: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """(batch, its first row's index), starting at the batch (parquet: row group) holding `first`."""
    if path.suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        start, group = 0, 0
        while group < parquet.num_row_groups and start + parquet.metadata.row_group(group).num_rows <= first:
            start += parquet.metadata.row_group(group).num_rows
            group += 1
        for batch in parquet.iter_batches(BATCH_ROWS, range(group, parquet.num_row_groups), columns):
            yield batch, start
            start += batch.num_rows
        return
    start = 0
    with pa.memory_map(str(path)) as source:
        for batch in _arrow_reader(source):
            if start + batch.num_rows > first:
                yield batch.select(columns), start
            start += batch.num_rows


def _arrow_reader(source: pa.MemoryMappedFile) -> pa.RecordBatchReader:
    """An Arrow file as `save_to_disk` writes it (the IPC stream format), or in the IPC file format."""
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        file = pa.ipc.open_file(source)
        batches = (file.get_batch(i) for i in range(file.num_record_batches))
        return pa.RecordBatchReader.from_batches(file.schema, batches)
