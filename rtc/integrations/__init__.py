"""Presence tracking for servers this project does not run itself.

Each integration lives in its own subpackage and imports its host library, which is an
optional extra (`rtc-presence[pycrdt-websocket]`); importing this package imports none of
them. `rtc.integrations.roster` is what they share: who is present and who may join.
"""

__all__: list[str] = []
