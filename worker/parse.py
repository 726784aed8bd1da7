"""Reading an uploaded CSV as a stream: rows validated and stored block by block, and each
block's image work added to the store and its chunk jobs queued as soon as the block is read.

Memory stays flat in rows: one block of rows is held at a time, and nothing of the blocks
before it. URLs are de-duplicated by the store (one image per URL, with an occurrence count),
and so are S. No.s: a block's repeats among its own rows are found in a map of that block, and
those of earlier blocks by one indexed query of the store per block, not by a set of the file.

Exactly once under re-runs (a parse killed half-way and run again from the top): block n is
always the n-th FLUSH_ROWS rows of the same file, so a re-run rebuilds the same blocks. Rows are
upserted by id; a block's image uses are added only to images whose `last_flush` is below n, and
its counts only while the batch's `flushed` watermark is below n; chunk numbers follow from the
blocks, so a re-run names the same chunk jobs, and those already in Redis are not queued again.
A block's S. No.s are looked up only among rows at lines before the block, which a re-run has
stored alike, so a row already stored by the killed run is never a duplicate of itself.
"""
from __future__ import annotations

from pydantic import ValidationError

from infra import jobs, metrics, stores
from infra.settings import Settings
from schemas.batch import BatchStatus
from schemas.csv_format import ColumnMap, HeaderError, map_columns
from schemas.records import ACCEPTED, REJECTED, ImageRecord, ProductRecord, product_id, url_hash
from schemas.rows import ProductRow, row_error, row_size_error, split_url_cell, storable_cells
from worker.csv_reader import CsvFileError, read_csv

FLUSH_ROWS = 1000


class ParseResult:
    """What one run of the parse read (a re-run reads, and so reports, the same)."""

    def __init__(self, header: list[str]):
        self.header = header
        self.rows_total = self.rows_valid = self.rows_invalid = self.images_total = 0
        self.flushes = 0
        self.chunks = 0
        self.stopped = False  # the batch left `processing` (cancelled) while being read


class _Block:
    """FLUSH_ROWS rows and, once settled, the uses of each URL among them in order of first use."""

    def __init__(self):
        self.rows: list[ProductRecord] = []
        self.valid = self.invalid = self.slots = 0
        self.images: dict[str, ImageRecord] = {}  # by url hash
        self.serial_lines: dict[int, int] = {}   # valid row's S. No. -> its first line here

    def add(self, row: ProductRecord) -> None:
        self.rows.append(row)
        if row.accepted:
            self.serial_lines.setdefault(row.serial_no, row.line)

    def settle(self, taken: dict[int, int]) -> None:
        """Reject each S. No. used before (`taken`: by an earlier block, with its line; else
        earlier in this block), then count the rows and gather their images."""
        for index, row in enumerate(self.rows):
            if row.accepted:
                first = taken.get(row.serial_no, self.serial_lines[row.serial_no])
                if first != row.line:  # its own line: the first use, never its own repeat
                    row = self.rows[index] = _repeated(row, first)
            if not row.accepted:
                self.invalid += 1
                continue
            self._count(row)

    def _count(self, row: ProductRecord) -> None:
        self.valid += 1
        for url, digest in zip(row.input_image_urls, row.image_hashes):
            image = self.images.get(digest)
            if image is None:
                image = self.images[digest] = ImageRecord.pending(row.batch_id, url, 0)
            image.occurrences += 1
            self.slots += 1


def parse_into_store(batch_id: str, binary, settings: Settings) -> ParseResult:
    """Validate every row and store it, block by block, each block's images queued at once.

    Raises CsvFileError when the file as a whole is unreadable.
    """
    header, rows, dialect = read_csv(binary)
    # Kept before the columns are checked, so even a batch that fails on its header gets its
    # errors.csv in the file's own dialect.
    stores.batches().record_dialect(batch_id, dialect)
    try:
        columns = map_columns(header)
    except HeaderError as error:
        raise CsvFileError(str(error)) from None
    result = ParseResult(header)
    block = _Block()
    for line, cells, problem in rows:
        block.add(_row_record(batch_id, line, cells, problem, columns))
        if len(block.rows) >= FLUSH_ROWS:
            if not _flush(batch_id, block, result, settings):
                return result
            block = _Block()
    if block.rows:
        _flush(batch_id, block, result, settings)
    return result


def _flush(batch_id: str, block: _Block, result: ParseResult, settings: Settings) -> bool:
    """Store one block and queue its chunks; False when the batch stopped meanwhile."""
    number = result.flushes + 1
    block.settle(stores.products().serials_taken(batch_id, list(block.serial_lines),
                                                 block.rows[0].line))
    # The block's new URLs fill chunks numbered after the previous blocks' chunks. A URL seen
    # in an earlier block keeps its chunk, so a chunk may end up with fewer images (or none).
    images = list(block.images.values())
    first_chunk = result.chunks
    for index, image in enumerate(images):
        image.chunk = first_chunk + index // settings.chunk_size
    chunk_count = -(-len(images) // settings.chunk_size)

    stores.products().write_rows(block.rows)
    added = stores.products().add_images(batch_id, number, images)
    counted = stores.batches().record_flush(
        batch_id, number, rows_total=len(block.rows), rows_valid=block.valid,
        rows_invalid=block.invalid, images_total=block.slots, chunks=chunk_count,
        images_processed=added.late_processed, images_failed=added.late_failed,
        images_reused=added.late_reused)
    if counted:
        metrics.rows_parsed(block.valid, block.invalid)
    if added.seen_before or not counted:
        # An earlier run got this far: its jobs for this block may be queued or done already.
        jobs.enqueue_chunks(batch_id, range(first_chunk, first_chunk + chunk_count),
                            skip_existing=True)
    else:
        created = set(added.created)
        jobs.enqueue_chunks(batch_id, sorted({im.chunk for im in images if im.id in created}))

    result.flushes = number
    result.chunks += chunk_count
    result.rows_total += len(block.rows)
    result.rows_valid += block.valid
    result.rows_invalid += block.invalid
    result.images_total += block.slots
    if stores.batches().status_of(batch_id) != BatchStatus.PROCESSING:
        result.stopped = True
        return False
    return True


def _repeated(row: ProductRecord, first: int) -> ProductRecord:
    """A valid row rejected for its S. No., which the row at line `first` has."""
    return ProductRecord(id=row.id, batch_id=row.batch_id, line=row.line, cells=row.cells,
                         serial_raw=row.serial_raw, url_slots=row.url_slots, status=REJECTED,
                         error=f"S. No.: {row.serial_no} is already used on line {first}")


def _row_record(batch_id: str, line: int, cells: list[str], problem: str | None,
                columns: ColumnMap) -> ProductRecord:
    """The row accepted or rejected on its own; a repeated S. No. is found when its block
    settles (_Block.settle)."""
    def cell(index: int) -> str:
        return cells[index] if index < len(cells) else ""

    # One output slot per comma-separated part of the URL cell, empty parts included, so the
    # output CSV's slots line up with the input's (contract section 2).
    parts = split_url_cell(cell(columns.urls))
    def record(**values) -> ProductRecord:
        return ProductRecord(id=product_id(batch_id, line), batch_id=batch_id, line=line,
                             cells=cells, serial_raw=cell(columns.serial).strip(),
                             url_slots=len(parts), **values)

    error = problem
    if error is None and len(cells) < len(columns.header) and max(
            columns.serial, columns.name, columns.urls) >= len(cells):
        error = f"the row has {len(cells)} fields, the header {len(columns.header)}"
    elif error is None:
        try:
            row = ProductRow(serial_no=cell(columns.serial), product_name=cell(columns.name),
                             input_image_urls=cell(columns.urls))
        except ValidationError as invalid:
            error = row_error(invalid)
        else:
            error = row_size_error(cells)
            if error is None:
                return record(status=ACCEPTED, serial_no=row.serial_no,
                              product_name=row.product_name,
                              input_image_urls=list(row.input_image_urls),
                              image_hashes=[url_hash(u) for u in row.input_image_urls],
                              empty_slots=[i for i, part in enumerate(parts) if not part])
    rejected = record(status=REJECTED, error=error)
    if row_size_error(cells):  # rejected for any reason, it must still fit in one document
        rejected.cells = kept = storable_cells(cells)
        rejected.serial_raw = kept[columns.serial].strip() if columns.serial < len(kept) else ""
    return rejected
