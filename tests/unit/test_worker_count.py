"""How many workers serve runs when not told: one per core it may run on, and one when
the config listens on an ephemeral port (port 0 cannot be shared by several)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from kubeca_server.process import MAX_WORKERS, default_workers


@pytest.mark.parametrize("listen", ["127.0.0.1:8443", "[::1]:9443", "0.0.0.0:443"])
def test_one_worker_per_core_on_a_named_port(listen: str) -> None:
    cores = len(os.sched_getaffinity(0))
    assert default_workers(SimpleNamespace(listen=listen)) == min(cores, MAX_WORKERS)  # type: ignore[arg-type]


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_one_worker_on_an_ephemeral_port(listen: str) -> None:
    assert default_workers(SimpleNamespace(listen=listen)) == 1  # type: ignore[arg-type]
