"""infra/http.py: the deadline reaches the socket however a peer frames its answer."""
from __future__ import annotations

import pytest

from infra.http import deadline, make_session
from infra.settings import Settings
from tests.servers import DripServer


@pytest.mark.parametrize("drip", ["body", "headers"])
@pytest.mark.parametrize("framing", DripServer.FRAMINGS)
def test_a_read_in_progress_is_cut_when_the_deadline_passes(framing, drip):
    peer = DripServer(framing, drip)
    settings = Settings(_env_file=None, allow_private_urls=True)
    try:
        with make_session(settings, pool_size=1) as session, deadline(0.3) as watch:
            try:
                with session.get(peer.url("/x"), stream=True, timeout=(1, 30)) as response:
                    response.raw.read()  # to the end, as a peer that closes to end it allows
            except Exception:  # noqa: BLE001 - how the cut shows depends on the framing
                pass
        assert watch.expired
        assert peer.cut.wait(3), "the peer was not cut off"
        assert not peer.served.is_set()
    finally:
        peer.stop()
