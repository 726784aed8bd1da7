"""`python -m worker`: what the forking worker builds once, before its work-horses fork."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.topology import ROOT

# In a child forked after `preload_first` (or not), make the S3 client as a job does and report
# the botocore data files it opened and whether the job modules had to be imported.
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
        opened = []
        sys.addaudithook(lambda event, args: event == "open" and opened.append(str(args[0])))
        imported_before = "worker.tasks" in sys.modules
        from infra import storage
        storage.get_s3()
        models = [p for p in opened if os.sep + "botocore" + os.sep + "data" in p]
        os.write(write, f"{imported_before} {len(models)}".encode())
        os._exit(0)
    os.wait()
    print(os.read(read, 100).decode())
""")


def _child_report(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_work_horses_forked_after_preload_import_nothing_and_load_no_s3_model():
    imported, model_files = _child_report("preload")
    assert imported
    assert model_files == 0


def test_without_preload_each_work_horse_loads_them_again():
    imported, model_files = _child_report("none")
    assert not imported
    assert model_files > 0
