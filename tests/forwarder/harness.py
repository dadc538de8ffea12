"""Run one frame through the real program (BPF_PROG_TEST_RUN) and the model; demand agreement."""

from __future__ import annotations

from services.forwarder.layout import Verdict, XdpAction
from services.forwarder.loader import Count, Forwarder, Role
from services.forwarder.model import ETH_HLEN, Outcome, OwnsFlow, edge, no_sockets
from services.forwarder.model import server as server_model
from services.forwarder.types import NodeConfig, TableState


def _counted(
    before: dict[int | None, dict[Verdict, Count]], after: dict[int | None, dict[Verdict, Count]]
) -> list[tuple[int | None, Verdict]]:
    return [(t, v) for t in after for v in after[t] if after[t][v].packets != before[t][v].packets]


def prepare(fwd: Forwarder, cfg: NodeConfig, st: TableState) -> None:
    fwd.configure(cfg)
    fwd.load_state(st)


def run_both(
    fwd: Forwarder,
    cfg: NodeConfig,
    st: TableState,
    frame: bytes,
    owns: OwnsFlow = no_sockets,
    count: bool = True,
) -> Outcome:
    """Assert the C program and the model agree on action, counter and output bytes.

    BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (EINVAL), so those are
    checked against the model only.
    """
    model = edge(frame, cfg, st) if fwd.role is Role.EDGE else server_model(frame, cfg, st, owns)
    if len(frame) < ETH_HLEN:
        return model
    before = fwd.read_counters() if count else None
    action, out = fwd.test_run(frame)
    assert (XdpAction(action), out.hex()) == (model.action, model.packet.hex())
    if before is not None:
        assert _counted(before, fwd.read_counters()) == [(model.tier, model.verdict)]
    return model
