"""The words every yes-or-no option of the API takes (any case): one list, so that `full_size=`
and `bom=` accept the same ones."""
from __future__ import annotations

BOOLEANS = {"true": True, "1": True, "yes": True, "on": True,
            "false": False, "0": False, "no": False, "off": False}
