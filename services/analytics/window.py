"""Per-PoP windows over pop-load.v1 and the analyzer that turns them into pop-status.v1.

Event time throughout: the clock is each PopLoad's ``at``, so replaying the topic gives the same
verdicts and tests need no sleep. The faust app holds one ``Analyzer`` and only wires it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from schemas.messages import PopLoad, PopStatus
from services.analytics.config import AnalyticsConfig, PopRules
from services.analytics.rules import Hysteresis, Metrics, ServerMetric, step


@dataclass(frozen=True)
class _Sample:
    at: float
    load_cores: float
    qos_p95_ms: float | None
    servers: dict[str, tuple[float, float]]  # healthy server -> (utilisation, capacity)
    names: tuple[str, ...]  # the same, as columns: usually every sample has the same servers
    utilisation: tuple[float, ...]
    capacity: tuple[float, ...]

    @classmethod
    def of(cls, load: PopLoad) -> _Sample:
        servers = {s.server: (s.utilisation, s.capacity_cores) for s in load.servers if s.healthy}
        values = servers.values()
        return cls(
            at=load.at,
            load_cores=load.combined_load_cores,
            qos_p95_ms=load.qos_p95_ms,
            servers=servers,
            names=tuple(servers),
            utilisation=tuple(u for u, _ in values),
            capacity=tuple(c for _, c in values),
        )


class PopWindow:
    """The last ``window_s`` seconds of one PoP's loads, averaged into ``Metrics``."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[_Sample] = deque()
        self._since = 0.0  # the first sample of the current unbroken run of samples

    @property
    def warm(self) -> bool:
        """The samples have covered a whole window without a gap longer than it. Why: right
        after a start (analytics restarted, a PoP new) or a silence, the window holds one
        sample, and one noisy sample must not flag a PoP (nor call it able to take load)."""
        return bool(self._samples) and self._samples[-1].at - self._since >= self.window_s - 1e-9

    def add(self, load: PopLoad) -> Metrics | None:
        """Add a sample; ``None`` if it is older than the newest one (a replay or reordering)."""
        if self._samples and load.at < self._samples[-1].at:
            return None
        if not self._samples or load.at - self._samples[-1].at > self.window_s:
            self._since = load.at
        self._samples.append(_Sample.of(load))
        while self._samples[0].at <= load.at - self.window_s:
            self._samples.popleft()
        return self._metrics(load)

    def _metrics(self, latest: PopLoad) -> Metrics:
        samples = self._samples
        qos = [s.qos_p95_ms for s in samples if s.qos_p95_ms is not None]
        newest = samples[-1]
        if all(s.names == newest.names for s in samples):
            # The usual case, the same servers in every sample: column sums, in sample order.
            n = len(samples)
            utils = [sum(us) / n for us in zip(*(s.utilisation for s in samples), strict=True)]
            servers = tuple(map(ServerMetric, utils, newest.capacity))
        else:
            # Per server, the mean of its utilisation over the samples that have it.
            metrics = []
            for name, (_, capacity) in newest.servers.items():
                seen = [s.servers[name][0] for s in samples if name in s.servers]
                metrics.append(ServerMetric(sum(seen) / len(seen), capacity))
            servers = tuple(metrics)
        return Metrics(
            pop=latest.pop,
            capacity_cores=latest.healthy_capacity_cores,
            load_cores=sum(s.load_cores for s in samples) / len(samples),
            servers=servers,
            qos_p95_ms=sum(qos) / len(qos) if qos else None,
        )


class Analyzer:
    """Every PoP's window and hysteresis; ``observe`` returns the status to publish, if any."""

    def __init__(self, config: AnalyticsConfig, targets: Mapping[str, float] | None = None) -> None:
        self._config = config
        self._targets = dict(targets or {})
        self._rules: dict[str, PopRules] = {}
        self._windows: dict[str, PopWindow] = {}
        self._states: dict[str, Hysteresis] = {}

    def rules(self, pop: str) -> PopRules:
        rules = self._rules.get(pop)
        if rules is None:
            rules = self._config.for_pop(pop)
            if pop in self._targets:
                rules = rules.model_copy(update={"target_utilisation": self._targets[pop]})
            self._rules[pop] = rules
        return rules

    def state(self, pop: str) -> Hysteresis | None:
        return self._states.get(pop)

    def observe(self, load: PopLoad) -> PopStatus | None:
        rules = self.rules(load.pop)
        window = self._windows.setdefault(load.pop, PopWindow(rules.window_s))
        metrics = window.add(load)
        if metrics is None or not window.warm:
            return None  # no verdict on less than a window: the PoP's last status stands
        self._states[load.pop], status = step(self._states.get(load.pop), metrics, load.at, rules)
        return status
