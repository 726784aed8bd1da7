"""Whether this process is stopping: set by a work-horse told by its worker (worker/__main__.py)
or by `make run`'s first Ctrl-C (worker/runner.py). Chunk jobs then start no new image: the
ones in flight finish and the rest of the chunk is queued again at once, for the workers that
go on (worker/chunks.py); `make run`'s thread workers take no more jobs."""
from __future__ import annotations

import threading

STOPPING = threading.Event()
