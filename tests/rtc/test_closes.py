"""How endings are classified: the table behind connection_error and leave's `clean`."""

import pytest

from rtc.closes import Ending, classify
from rtc.errors import AnnounceTimeoutError, ProtocolError, UnsupportedDataError


@pytest.mark.parametrize(
    ("kwargs", "ending"),
    [
        ({}, Ending("abnormal-closure", 1006, False)),  # transport lost, no close frame
        ({"received": (1000, "")}, Ending(None, 1000, True)),
        ({"received": (1001, "")}, Ending(None, 1001, True)),
        ({"received": (1005, "")}, Ending(None, 1005, True)),  # y-websocket's ws.close()
        ({"received": (4000, "x")}, Ending("abnormal-closure", 4000, False)),
        ({"sent": (1011, "keepalive ping timeout")}, Ending("ping-timeout", 1011, False)),
        ({"sent": (1009, "too big")}, Ending("message-too-big", 1009, False)),
        ({"sent": (1002, "bad frame")}, Ending("protocol-error", 1002, False)),
        ({"sent": (1001, "")}, Ending(None, 1001, True)),  # shutdown, peer gone before echo
        ({"error": ProtocolError()}, Ending("protocol-error", 1002, False)),
        ({"error": UnsupportedDataError()}, Ending("protocol-error", 1003, False)),
        ({"error": AnnounceTimeoutError()}, Ending("announce-timeout", 4408, False)),
        ({"decided": (4429, "connection-limit-exceeded")}, Ending(None, 4429, True)),
        ({"decided": (4401, "token-expired")}, Ending(None, 4401, True)),
        ({"decided": (4403, "revoked")}, Ending(None, 4403, True)),
        ({"decided": (4409, "session-replaced")}, Ending(None, 4409, True)),
        ({"decided": (1013, "outbox-full")}, Ending("outbox-full", 1013, False)),
        # what the server decided wins over the frames that followed
        ({"decided": (4429, "x"), "received": (1000, "")}, Ending(None, 4429, True)),
    ],
)
def test_classify(kwargs: dict, ending: Ending) -> None:
    arguments = {"error": None, "decided": None, "received": None, "sent": None, **kwargs}
    assert classify(**arguments) == ending
