"""The `batchpress` commands: upload, status, list, watch, download, cancel, retry.

Exit status: 0 completed (or, for `status`, still running), 3 completed_with_errors, 4 failed,
5 cancelled, 1 any error (the server's problem printed as one line), 2 a usage error.
"""
from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.client import FINISHED, Client, ClientError, decode

EXIT_CODES = {"completed": 0, "completed_with_errors": 3, "failed": 4, "cancelled": 5}
EXIT_ERROR = 1
STATUSES = ["queued", "processing", *FINISHED]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Context:
    def __init__(self, url: str, api_key: str | None, as_json: bool):
        self.client = Client(url, api_key)
        self.as_json = as_json


def emit_json(value) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def reading(batch: dict) -> bool:
    """The batch's file is still being read: its totals, and so its progress, still grow."""
    return batch["status"] not in FINISHED and not batch["rows"].get("done_reading", True)


def progress_text(batch: dict) -> str:
    """`42 %`, or `reading file` while a percentage of a growing total would mislead (it
    reaches 100 % whenever the workers catch up with the reading)."""
    return "reading file" if reading(batch) else f"{round(batch['progress'] * 100)} %"


def summary(batch: dict) -> str:
    rows, images = batch["rows"], batch["images"]
    line = (f"{batch['id']}  {batch['status']}  {progress_text(batch)}  "
            f"rows {rows['valid']}/{rows['total']} valid  "
            f"images {images['processed']}/{images['total']} done, {images['failed']} failed")
    if images.get("reused"):  # a re-import: copied from an earlier batch, not encoded again
        line += f", {images['reused']} reused"
    if batch.get("error"):
        line += f"  ({batch['error']})"
    return line


def exit_for(batch: dict) -> int:
    return EXIT_CODES.get(batch["status"], 0)


def show_batch(ctx: Context, batch: dict) -> None:
    if ctx.as_json:
        emit_json(batch)
    else:
        out.print(summary(batch), markup=False)


def watch_batch(ctx: Context, batch: dict) -> dict:
    """Follow the events stream to the end, with a progress bar on stderr unless --json."""
    if batch["status"] in FINISHED:
        return batch
    final = batch
    show_bar = not ctx.as_json
    with Progress(TextColumn("{task.fields[status]:<22}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("images"), TimeElapsedColumn(),
                  console=err, disable=not show_bar, transient=False) as bar:
        def shown(batch: dict) -> dict:  # no total (a moving bar) while the file is read
            images = batch["images"]
            return dict(total=None if reading(batch) else images["total"] or None,
                        status=batch["status"] + (" (reading file)" if reading(batch) else ""))

        task = bar.add_task("batch", **shown(batch))
        for event in ctx.client.events(batch["id"]):
            if event.name == "error":
                raise ClientError(decode(event).get("detail", "the events stream failed"))
            if event.name not in ("progress", "status"):
                continue
            final = decode(event)
            images = final["images"]
            bar.update(task, completed=images["processed"] + images["failed"], **shown(final))
    return final


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="BATCHPRESS_URL", default="http://localhost:8000",
              show_default=True, help="The service (env BATCHPRESS_URL).")
@click.option("--api-key", envvar="BATCHPRESS_API_KEY", default=None,
              help="Sent as a bearer token (env BATCHPRESS_API_KEY).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def cli(context: click.Context, url: str, api_key: str | None, as_json: bool) -> None:
    """Batchpress: compress the product images listed in a CSV file."""
    context.obj = Context(url, api_key, as_json)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--webhook-url", help="Called with a signed request when the batch finishes.")
@click.option("--idempotency-key", help="Send again safely: the same key gives the same batch.")
@click.option("--sizes", metavar="NAME=PIXELS,...", help="Extra, smaller outputs of every image, "
              "by name and longest edge, e.g. thumb=200,medium=800 (the server's default sizes "
              "without it; an empty value asks for none).")
@click.option("--full-size/--no-full-size", default=None, help="With --no-full-size only the "
              "sizes are made: the main output is the largest size (default: the server's).")
@click.option("--wait", is_flag=True, help="Follow the batch to the end; exit by its status.")
@click.pass_obj
def upload(ctx: Context, file: str, webhook_url: str | None, idempotency_key: str | None,
           sizes: str | None, full_size: bool | None, wait: bool) -> None:
    """Upload a product CSV."""
    batch = ctx.client.upload(file, webhook_url, idempotency_key, sizes, full_size)
    if not wait:
        show_batch(ctx, batch)
        return
    if not ctx.as_json:
        err.print(f"uploaded {batch['id']}", markup=False)
    batch = watch_batch(ctx, batch)
    show_batch(ctx, batch)
    sys.exit(exit_for(batch))


@cli.command()
@click.argument("batch_id")
@click.pass_obj
def status(ctx: Context, batch_id: str) -> None:
    """Show a batch; exit by its status once it has finished."""
    batch = ctx.client.json("GET", f"/batches/{batch_id}")
    show_batch(ctx, batch)
    sys.exit(exit_for(batch))


@cli.command(name="list")
@click.option("--status", "status_", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.pass_obj
def list_batches(ctx: Context, status_: str | None, limit: int) -> None:
    """List batches, newest first."""
    params = {"limit": limit, **({"status": status_} if status_ else {})}
    page = ctx.client.json("GET", "/batches", params=params)
    if ctx.as_json:
        emit_json(page)
        return
    if not page["items"]:
        out.print("no batches")
        return
    columns = ("id", "created", "file", "status", "progress", "images")
    rows = [(b["id"], b["created_at"], b.get("filename") or "", b["status"],
             progress_text(b),
             f"{b['images']['processed']}/{b['images']['total']}"
             + (f" ({b['images']['failed']} failed)" if b["images"]["failed"] else ""))
            for b in page["items"]]
    if not out.is_terminal:  # a pipe gets whole values, tab-separated
        for row in (columns, *rows):
            click.echo("\t".join(row))
        return
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, no_wrap=column in ("id", "status"))
    for row in rows:
        table.add_row(*row)
    out.print(table)


@cli.command()
@click.argument("batch_id")
@click.pass_obj
def watch(ctx: Context, batch_id: str) -> None:
    """Follow a batch's progress to the end; exit by its status."""
    batch = watch_batch(ctx, ctx.client.json("GET", f"/batches/{batch_id}"))
    show_batch(ctx, batch)
    sys.exit(exit_for(batch))


@cli.command()
@click.argument("batch_id")
@click.option("--output", "-o", "output", metavar="FILE", help="Where output.csv goes.")
@click.option("--errors", "-e", "errors", metavar="FILE", help="Also save errors.csv here.")
@click.option("--images", "-i", "images", metavar="FILE", help="Also save every output image "
              "as one ZIP here.")
@click.option("--delimiter", type=click.Choice(["comma", "semicolon", "tab", "input"]),
              help="The CSVs' delimiter (default: comma; input: the uploaded file's, and its "
              "BOM unless --bom/--no-bom).")
@click.option("--bom/--no-bom", default=None,
              help="Start the CSVs with a UTF-8 BOM, or not (default: not).")
@click.pass_obj
def download(ctx: Context, batch_id: str, output: str | None, errors: str | None,
             images: str | None, delimiter: str | None, bom: bool | None) -> None:
    """Save output.csv (named by the server unless --output), and errors.csv / the images ZIP."""
    wanted = [("output.csv", output)]
    if errors:
        wanted.append(("errors.csv", errors))
    if images:
        wanted.append(("outputs.zip", images))
    dialect = {"delimiter": delimiter, "bom": None if bom is None else str(bom).lower()}
    if delimiter == "input" and bom is None:  # the file back as it was uploaded
        dialect["bom"] = "input"
    saved = []
    for name, target in wanted:
        params = ({k: v for k, v in dialect.items() if v is not None}
                  if name.endswith(".csv") else None)
        path, size = ctx.client.download(f"/batches/{batch_id}/{name}", target, params)
        saved.append({"file": name, "path": path, "bytes": size})
    if ctx.as_json:
        emit_json(saved)
    else:
        for item in saved:
            out.print(f"saved {item['file']} to {item['path']} ({item['bytes']} bytes)",
                      markup=False)


@cli.command()
@click.argument("batch_id")
@click.pass_obj
def cancel(ctx: Context, batch_id: str) -> None:
    """Cancel a queued or processing batch."""
    show_batch(ctx, ctx.client.json("POST", f"/batches/{batch_id}/cancel"))


@cli.command()
@click.argument("batch_id")
@click.option("--wait", is_flag=True, help="Follow the batch to the end; exit by its status.")
@click.pass_obj
def retry(ctx: Context, batch_id: str, wait: bool) -> None:
    """Re-process the failed images of a finished batch."""
    batch = ctx.client.json("POST", f"/batches/{batch_id}/retry")
    if wait:
        batch = watch_batch(ctx, batch)
        show_batch(ctx, batch)
        sys.exit(exit_for(batch))
    show_batch(ctx, batch)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except ClientError as error:
        err.print(f"error: {error}", markup=False)
        sys.exit(EXIT_ERROR)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
