"""The HTTP side of the CLI: one session with the key, problem+json errors, the events stream."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

import requests

FINISHED = ("completed", "completed_with_errors", "failed", "cancelled")
TIMEOUT = (5, 60)  # connect, read
# Problem fields worth a mention after the detail (the rest repeats it).
USEFUL_EXTRAS = ("missing_columns", "parameter", "field", "service", "batch_status", "batch_id")


class ClientError(Exception):
    """Anything that stops a command: a problem answer, an unreachable server, a bad reply."""


def problem_line(response: requests.Response) -> str:
    """A problem+json answer as one readable line: `Title (status kind): detail; extras`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = " ".join(response.text.split())[:200]
        return f"HTTP {response.status_code}" + (f": {text}" if text else "")
    kind = str(body.get("type", "")).rsplit("/", 1)[-1]
    line = f"{body.get('title') or 'Error'} ({response.status_code}{' ' + kind if kind else ''})"
    if body.get("detail"):
        line += f": {body['detail']}"
    extras = [f"{name}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
              for name, value in body.items() if name in USEFUL_EXTRAS]
    return line + ("; " + "; ".join(extras) if extras else "")


RETRY = "retry"  # not an event: the stream's reconnect delay, passed on by the parser


@dataclass
class Event:
    name: str
    data: str
    id: str | None


class Client:
    def __init__(self, base_url: str, api_key: str | None = None):
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "batchpress-cli"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base}/api/v1{path}"
        try:
            response = self.session.request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.ConnectionError:
            raise ClientError(f"cannot reach {self.base} (is the service running? is "
                              "BATCHPRESS_URL right?)") from None
        except requests.Timeout:
            raise ClientError(f"{self.base} did not answer in time") from None
        except requests.RequestException as error:
            raise ClientError(f"request to {self.base} failed: {error}") from None
        if response.status_code >= 400:
            raise ClientError(problem_line(response))
        return response

    def json(self, method: str, path: str, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{self.base} did not answer with JSON (HTTP "
                              f"{response.status_code}); is BATCHPRESS_URL right?") from None

    def upload(self, path: str, webhook_url: str | None, idempotency_key: str | None,
               sizes: str | None = None, full_size: bool | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        fields = {"webhook_url": webhook_url, "sizes": sizes,
                  "full_size": None if full_size is None else str(full_size).lower()}
        try:
            handle = open(path, "rb")
        except OSError as error:
            raise ClientError(f"cannot read {path}: {error.strerror}") from None
        with handle:
            name = path.replace("\\", "/").rsplit("/", 1)[-1]
            return self.json("POST", "/batches", headers=headers,
                             files={"file": (name, handle, "text/csv")},
                             data={k: v for k, v in fields.items() if v is not None})

    def download(self, path: str, target: str | None,
                 params: dict | None = None) -> tuple[str, int]:
        """Stream a file to `target` (default: the name the server gives); returns (name, bytes)."""
        response = self.request("GET", path, stream=True, params=params)
        name = target or _disposition_name(response.headers.get("Content-Disposition", "")) \
            or path.rsplit("/", 1)[-1]
        size = 0
        try:
            with open(name, "wb") as out:
                for block in response.iter_content(64 * 1024):
                    out.write(block)
                    size += len(block)
        except OSError as error:
            raise ClientError(f"cannot write {name}: {error.strerror}") from None
        return name, size

    def events(self, batch_id: str) -> Iterator[Event]:
        """The batch's server-sent events until its final `status` event, reconnecting with
        Last-Event-ID when the server ends a long stream."""
        last_id, retry_ms, first = None, 2000, True
        while True:
            if not first:  # the server's `retry:` delay, so a closing server is not hammered
                time.sleep(retry_ms / 1000)
            first = False
            headers = {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            response = self.request("GET", f"/batches/{batch_id}/events", headers=headers,
                                    stream=True)
            if response.status_code == 204:  # the final event was already seen
                return
            with response:
                for event in _parse_sse(response.iter_lines(decode_unicode=True)):
                    if event.name == RETRY:
                        retry_ms = int(event.data)
                        continue
                    if event.id:
                        last_id = event.id
                    yield event
                    if event.name in ("status", "error"):
                        return


def _disposition_name(header: str) -> str | None:
    match = re.search(r"filename\*=UTF-8''([^;]+)", header, re.I)
    if match:
        name = unquote(match.group(1))
    else:
        match = re.search(r'filename="([^"]+)"', header)
        name = match.group(1) if match else None
    if name:  # never a path: a server could send ../ in a name
        name = name.replace("\\", "/").rsplit("/", 1)[-1].lstrip(".")
    return name or None


def _parse_sse(lines) -> Iterator[Event]:
    name, data, event_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                yield Event(name, "\n".join(data), event_id)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
        elif field == "retry" and value.isdigit():
            yield Event(RETRY, value, None)


def decode(event: Event) -> dict:
    try:
        return json.loads(event.data)
    except ValueError:
        raise ClientError(f"the events stream sent something that is not JSON: "
                          f"{event.data[:100]!r}") from None
