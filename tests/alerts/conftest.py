from __future__ import annotations

import pytest

from tests.alerts.receiver import Receiver


@pytest.fixture
def receivers():
    """Make loopback HTTP receivers: receivers() / receivers("fail", failures=1) / receivers("hang")."""
    made: list[Receiver] = []

    def make(mode: str = "ok", failures: int = 0) -> Receiver:
        made.append(Receiver(mode, failures))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()
