"""`python -m worker`: what the forking worker builds once, before its work-horses fork."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.topology import ROOT

# In a child forked after `preload` (or not), make the S3 client and the stores as a job does and
# report whether the job modules were there, the botocore data files it opened and the modules
# it imported.
PROBE = textwrap.dedent("""
    import os, sys
    os.environ.update(S3_ENDPOINT_URL="http://127.0.0.1:9", REDIS_URL="redis://127.0.0.1:9",
                      MONGO_URL="mongodb://127.0.0.1:9", AWS_ACCESS_KEY_ID="x",
                      AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    from worker import __main__ as main
    if sys.argv[1] == "preload":
        main.preload()
    read, write = os.pipe()
    if os.fork() == 0:
        opened, modules = [], set(sys.modules)
        sys.addaudithook(lambda event, args: event == "open" and opened.append(str(args[0])))
        imported_before = "worker.tasks" in sys.modules
        from infra import storage, stores
        storage.get_s3()
        stores.current()  # MongoDB's, as in production
        models = [p for p in opened if os.sep + "botocore" + os.sep + "data" in p]
        imported = sorted(set(sys.modules) - modules)
        os.write(write, f"{imported_before} {len(models)} {','.join(imported) or '-'}".encode())
        os._exit(0)
    os.wait()
    print(os.read(read, 100_000).decode())
""")


def _child_report(mode: str) -> tuple[bool, int, list[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    return out[0] == "True", int(out[1]), [] if out[2] == "-" else out[2].split(",")


def test_work_horses_forked_after_preload_import_nothing_and_load_no_s3_model():
    jobs_there, model_files, imported = _child_report("preload")
    assert jobs_there
    assert model_files == 0
    assert imported == []  # pymongo included: the stores' module was imported before the fork


def test_without_preload_each_work_horse_loads_them_again():
    jobs_there, model_files, imported = _child_report("none")
    assert not jobs_there
    assert model_files > 0
    assert "pymongo" in imported
