"""Turning an uploaded CSV into product rows and unique image work, chunked for the workers."""
from __future__ import annotations

from pydantic import ValidationError

from infra import stores
from infra.settings import Settings
from schemas.csv_format import ColumnMap, HeaderError, map_columns
from schemas.records import ACCEPTED, REJECTED, ImageRecord, ProductRecord, product_id, url_hash
from schemas.rows import ProductRow, row_error, row_size_error, split_url_cell, storable_cells
from worker.csv_reader import CsvFileError, read_csv

FLUSH_ROWS = 1000


class ParseResult:
    def __init__(self):
        self.rows_total = self.rows_valid = self.rows_invalid = 0
        self.images: dict[str, ImageRecord] = {}  # by url hash
        self.chunks = 0
        self.header: list[str] = []

    @property
    def images_total(self) -> int:
        return sum(im.occurrences for im in self.images.values())


def parse_into_store(batch_id: str, binary, settings: Settings) -> ParseResult:
    """Validate every row, store rows in bulk, and assign each unique URL to a chunk.

    Raises CsvFileError when the file as a whole is unreadable.
    """
    header, rows = read_csv(binary)
    try:
        columns = map_columns(header)
    except HeaderError as error:
        raise CsvFileError(str(error)) from None
    result = ParseResult()
    result.header = header
    seen_serials: dict[int, int] = {}
    store = stores.products()
    buffer: list[ProductRecord] = []
    for line, cells, problem in rows:
        result.rows_total += 1
        row = _row_record(batch_id, line, cells, problem, columns, seen_serials)
        if row.accepted:
            result.rows_valid += 1
            for url, digest in zip(row.input_image_urls, row.image_hashes):
                image = result.images.get(digest)
                if image is None:
                    chunk = len(result.images) // settings.chunk_size
                    image = result.images[digest] = ImageRecord.pending(batch_id, url, chunk)
                image.occurrences += 1
        else:
            result.rows_invalid += 1
        buffer.append(row)
        if len(buffer) >= FLUSH_ROWS:
            store.write_rows(buffer)
            buffer = []
    store.write_rows(buffer)
    store.write_images(batch_id, result.images.values())
    result.chunks = (len(result.images) + settings.chunk_size - 1) // settings.chunk_size
    return result


def _row_record(batch_id: str, line: int, cells: list[str], problem: str | None,
                columns: ColumnMap, seen_serials: dict[int, int]) -> ProductRecord:
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
            first = seen_serials.setdefault(row.serial_no, line) if error is None else line
            if first != line:
                error = f"S. No.: {row.serial_no} is already used on line {first}"
            elif error is None:
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
