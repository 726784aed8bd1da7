"""cli/client.py against a real loopback HTTP server: the events stream and problem lines."""
from __future__ import annotations

import json

import pytest

from cli.client import Client, ClientError
from tests.servers import Route


def sse(*events: tuple[str, str, dict]) -> bytes:
    return "".join(f"id: {i}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
                   for i, name, data in events).encode()


def test_events_resume_with_last_event_id_when_the_server_ends_a_stream(http_server):
    answers = iter([
        Route(b"retry: 10\n\n" + sse(("0.2.1", "progress", {"n": 1}))
              + b": stream time limit reached\n\n", headers={"Content-Type": "text/event-stream"}),
        Route(sse(("0.3.2", "progress", {"n": 2}), ("0.4.0", "status", {"n": 3})),
              headers={"Content-Type": "text/event-stream"}),
    ])
    http_server.routes["/api/v1/batches/bat_1/events"] = lambda _handler: next(answers)
    events = list(Client(http_server.base, "k-1").events("bat_1"))
    assert [(e.name, json.loads(e.data)["n"]) for e in events] == [
        ("progress", 1), ("progress", 2), ("status", 3)]
    first, second = [r["headers"] for r in http_server.requests]
    assert "Last-Event-ID" not in first and second["Last-Event-ID"] == "0.2.1"
    assert second["Authorization"] == "Bearer k-1"


def test_a_problem_answer_and_a_non_json_answer_become_one_line(http_server):
    http_server.routes["/api/v1/batches/x"] = Route(
        json.dumps({"type": "/problems/dependency-unavailable", "title": "Service Unavailable",
                    "status": 503, "detail": "MongoDB is not reachable right now",
                    "instance": "/api/v1/batches/x", "service": "MongoDB"}).encode(), 503,
        {"Content-Type": "application/problem+json"})
    http_server.routes["/api/v1/batches/y"] = Route(b"<html>\n<b>Bad gateway</b>\n</html>", 502)
    with pytest.raises(ClientError) as problem:
        Client(http_server.base).json("GET", "/batches/x")
    assert str(problem.value) == ("Service Unavailable (503 dependency-unavailable): MongoDB is "
                                  "not reachable right now; service: MongoDB")
    with pytest.raises(ClientError) as proxy:
        Client(http_server.base).json("GET", "/batches/y")
    assert str(proxy.value) == "HTTP 502: <html> <b>Bad gateway</b> </html>"
