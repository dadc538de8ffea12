"""A simulator run's statuses and policies for the web console (``popshift console --replay``).

JSON lines: the first holds the network (with each PoP's coordinates, for the world map), then
``{"t": simulated seconds, "topic": ..., "message": ...}`` in the order the controller saw
them. Every policy event is kept (renewals keep leases alive on the page); a PoP's status only
when its state turns or ``status_every_s`` after the last one kept, so a 300-PoP day stays tens
of megabytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from popshift import topics
from popshift.network import NetworkConfig
from schemas.messages import PolicyEvent, PopState, PopStatus, PopStatusRow


class ConsoleRecording:
    def __init__(self, path: Path, network: NetworkConfig, status_every_s: float = 60.0) -> None:
        self.status_every_s = status_every_s
        self._kept: dict[str, tuple[float, PopState]] = {}
        self.lines = 0
        self._out: TextIO = path.open("w")
        # a status kept this long apart is not stale on the page
        head = {"network": network.model_dump(mode="json"), "status_max_age_s": 2 * status_every_s}
        self._out.write(json.dumps(head) + "\n")

    def _write(self, t: float, topic: str, payload: str) -> None:
        self._out.write(f'{{"t": {t:.3f}, "topic": "{topic}", "message": {payload}}}\n')
        self.lines += 1

    def status(self, t: float, status: PopStatus | PopStatusRow) -> None:
        kept = self._kept.get(status.pop)
        if kept is not None and kept[1] is status.state and t - kept[0] < self.status_every_s:
            return
        self._kept[status.pop] = (t, status.state)
        message = status if isinstance(status, PopStatus) else PopStatus(**status._asdict())
        self._write(t, topics.POP_STATUS.name, message.model_dump_json())

    def policy(self, t: float, event: PolicyEvent) -> None:
        self._write(t, topics.POLICIES.name, event.model_dump_json())

    def close(self) -> None:
        self._out.close()
