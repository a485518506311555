"""Vehicle routes through the street graph of one split, and the smooth centre line of a route.

The street graph: street segments end at the edges of their intersections; the ends closer than ``join_m``
(default: the widest street, plus 1 m) meet at one node, placed where the centre lines cross (least squares). An
end closed by a wall (a split border) gets a node of its own at the wall: a dead end. A route is a walk along
connected streets (no U-turns, unused streets first) from a random node, through the nodes' centres. Its centre
line is made smooth by a circular arc of radius ``turn_radius_m`` at each turn, tangent to both streets' centre
lines (a fillet), and sampled densely: positions, unit tangents, left normals and signed curvature (positive for
a left turn) at a spacing of ``step_m`` of arc length ``s``. World frame: metres, x east, y north.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from visloc.data.scene.places import Street


@dataclass(frozen=True)
class StreetGraph:
    """Streets as edges between intersections.

    Attributes:
        nodes: float64 [V, 2] node positions (metres).
        edges: (street id, node a at the street's start, node b at its end, length m, width m) per street kept.
        node_half_width: float64 [V], half the widest street meeting at each node (metres; 0 at a dead end).
    """

    nodes: np.ndarray
    edges: tuple[tuple[int, int, int, float, float], ...]
    node_half_width: np.ndarray

    def incident(self, node: int) -> list[int]:
        """Indices into ``edges`` of the streets at ``node``."""
        return [k for k, e in enumerate(self.edges) if node in (e[1], e[2])]


def _clusters(ends: np.ndarray, join_m: float) -> np.ndarray:
    """Label [E] of each end point [E, 2]: ends closer than ``join_m`` (transitively) share a label."""
    parent = np.arange(len(ends))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    d = np.linalg.norm(ends[:, None] - ends[None], axis=2)
    for i, j in zip(*np.nonzero(np.triu(d < join_m, 1)), strict=True):
        parent[root(int(i))] = root(int(j))
    return np.array([root(i) for i in range(len(ends))])


def _crossing(points: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Least-squares crossing [2] of the lines through ``points`` [n, 2] along unit ``dirs`` [n, 2]."""
    P = np.eye(2)[None] - dirs[:, :, None] * dirs[:, None, :]
    A, b = P.sum(0), np.einsum("nij,nj->i", P, points)
    if abs(np.linalg.det(A)) < 1e-6:  # parallel streets only: the middle of their ends
        return points.mean(0)
    return np.linalg.solve(A, b)


def street_graph(streets: Sequence[Street], keep: Collection[int] | None = None,
                 blocked: Collection[tuple[int, int]] = (), join_m: float | None = None) -> StreetGraph:
    """The graph of the streets ``keep`` (ids; default all), with the intersections of all ``streets``.

    Args:
        streets: every street of the city (their ends make the intersections).
        keep: ids of the streets that are edges.
        blocked: ``(street id, 0 | 1)``: the street's start (0) or end (1) is closed (a dead end there).
        join_m: ends closer than this meet at one node; default the widest street plus 1 m.
    """
    keep = {s.id for s in streets} if keep is None else set(keep)
    blocked = set(blocked)
    join = max(s.width_m for s in streets) + 1.0 if join_m is None else join_m
    ends = np.array([p for s in streets for p in (s.start, s.end)], np.float64).reshape(-1, 2)
    dirs = np.array([d for s in streets for d in _unit_dirs(s)]).reshape(-1, 2)
    labels = _clusters(ends, join)
    roots = sorted(set(labels.tolist()))
    nodes = [_crossing(ends[labels == r], dirs[labels == r]) for r in roots]
    half = [max(s.width_m for k, s in enumerate(streets) if r in labels[2 * k:2 * k + 2]) / 2 for r in roots]
    index = {r: i for i, r in enumerate(roots)}
    edges = []
    for k, st in enumerate(streets):
        if st.id not in keep:
            continue
        ab = []
        for e in (0, 1):
            if (st.id, e) in blocked:  # a node of its own at the wall
                nodes.append(ends[2 * k + e])
                half.append(0.0)
                ab.append(len(nodes) - 1)
            else:
                ab.append(index[int(labels[2 * k + e])])
        edges.append((st.id, ab[0], ab[1], float(np.linalg.norm(nodes[ab[1]] - nodes[ab[0]])), float(st.width_m)))
    return StreetGraph(np.array(nodes, np.float64).reshape(-1, 2), tuple(edges), np.array(half, np.float64))


def _unit_dirs(st: Street) -> tuple[np.ndarray, np.ndarray]:
    d = np.subtract(st.end, st.start).astype(np.float64)
    d /= np.linalg.norm(d)
    return d, d


@dataclass(frozen=True)
class Route:
    """A walk through the street graph.

    Attributes:
        street_ids: the streets driven, in order ([K]).
        widths: their widths (metres, [K]).
        nodes: float64 [K + 1, 2] the nodes passed, from start to end.
        node_half_width: float64 [K + 1], half the widest street at each node.
    """

    street_ids: tuple[int, ...]
    widths: tuple[float, ...]
    nodes: np.ndarray
    node_half_width: np.ndarray

    @property
    def length_m(self) -> float:
        """Length of the polyline through the nodes (metres)."""
        return float(np.linalg.norm(np.diff(self.nodes, axis=0), axis=1).sum())


def _walk(graph: StreetGraph, start: int, target_m: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(edge, node reached) steps of a walk from ``start``: no U-turn, unused streets first."""
    steps: list[tuple[int, int]] = []
    used: set[int] = set()
    node, prev_edge, total = start, -1, 0.0
    while total < target_m:
        options = [k for k in graph.incident(node) if k != prev_edge]
        fresh = [k for k in options if k not in used]
        pool = fresh or options
        if not pool:
            break
        k = pool[int(rng.integers(len(pool)))]
        _, a, b, length, _ = graph.edges[k]
        node = b if node == a else a
        steps.append((k, node))
        used.add(k)
        prev_edge, total = k, total + length
    return steps


def plan_route(graph: StreetGraph, target_m: float, rng: np.random.Generator, tries: int = 64) -> Route:
    """A route of at least ``target_m`` metres (or the longest of ``tries`` walks when none is that long).

    Raises:
        ValueError: the graph has no street.
    """
    if not graph.edges:
        raise ValueError("plan_route: no street to drive on")
    best: tuple[float, int, list[tuple[int, int]]] = (-1.0, 0, [])
    used_nodes = sorted({n for e in graph.edges for n in e[1:3]})
    for _ in range(tries):
        start = used_nodes[int(rng.integers(len(used_nodes)))]
        steps = _walk(graph, start, target_m, rng)
        length = sum(graph.edges[k][3] for k, _ in steps)
        if length > best[0]:
            best = (length, start, steps)
        if length >= target_m:
            break
    _, start, steps = best
    node_ids = [start] + [n for _, n in steps]
    return Route(tuple(graph.edges[k][0] for k, _ in steps), tuple(graph.edges[k][4] for k, _ in steps),
                 graph.nodes[node_ids], graph.node_half_width[node_ids])


@dataclass(frozen=True)
class Centreline:
    """The route's smoothed centre line, sampled every ``step_m`` metres of arc length.

    Attributes:
        s: float64 [M] arc length (metres, from 0).
        xy: float64 [M, 2] positions; ``tangent``, ``normal``: [M, 2] unit tangent and left normal.
        curvature: float64 [M] signed curvature (1/m, > 0 turning left, 0 on straight parts).
        edge: int64 [M] index into ``route.street_ids`` of the street each sample belongs to (an arc's first
            half to the street it leaves, its second half to the street it enters).
        node_s: float64 [K + 1] arc length at each node's passage (the middle of its arc).
        arc_start, arc_end: float64 [K + 1] arc length where each node's arc begins and ends (equal to
            ``node_s`` where the route goes straight on; the first and last nodes have none).
        tan_len: float64 [K + 1] distance from each node to its arc's ends along the streets (0: straight on).
    """

    s: np.ndarray
    xy: np.ndarray
    tangent: np.ndarray
    normal: np.ndarray
    curvature: np.ndarray
    edge: np.ndarray
    node_s: np.ndarray
    arc_start: np.ndarray
    arc_end: np.ndarray
    tan_len: np.ndarray


def _turns(nodes: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit directions [K, 2] of the legs, signed turn angles [K + 1] and tangent lengths [K + 1] per node."""
    d = np.diff(nodes, axis=0)
    u = d / np.linalg.norm(d, axis=1, keepdims=True)
    theta = np.zeros(len(nodes))
    cross = u[:-1, 0] * u[1:, 1] - u[:-1, 1] * u[1:, 0]
    dot = np.sum(u[:-1] * u[1:], axis=1)
    theta[1:-1] = np.arctan2(cross, dot)
    theta[np.abs(theta) < 1e-6] = 0.0
    return u, theta, radius * np.tan(np.abs(theta) / 2)


def centreline(route: Route, turn_radius_m: float, step_m: float = 0.05) -> Centreline:
    """Sample the route's centre line with an arc of ``turn_radius_m`` at every turn.

    Raises:
        ValueError: a turn's arc does not fit on its streets (the radius is too large for their lengths).
    """
    nodes = route.nodes
    u, theta, tan_len = _turns(nodes, turn_radius_m)
    leg = np.linalg.norm(np.diff(nodes, axis=0), axis=1)
    if np.any(tan_len[:-1] + tan_len[1:] > leg):
        raise ValueError(f"centreline: turn radius {turn_radius_m} m does not fit on a street of the route")
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # xy, tangent, curvature, edge
    for k in range(len(leg)):
        if theta[k] != 0:  # the second half of node k's arc belongs to street k
            parts.append(_arc(nodes[k], u[k - 1], theta[k], turn_radius_m, step_m, (k - 1, k)))
        a, b = nodes[k] + u[k] * tan_len[k], nodes[k + 1] - u[k] * tan_len[k + 1]
        n = max(int(np.ceil(np.linalg.norm(b - a) / step_m)), 1)
        w = np.arange(n)[:, None] / n
        parts.append((a + (b - a) * w, np.repeat(u[k][None], n, 0), np.zeros(n), np.full(n, k)))
    parts.append((nodes[-1][None], u[-1][None], np.zeros(1), np.array([len(leg) - 1])))
    xy, tangent, curv, edge = (np.concatenate(c) for c in zip(*parts, strict=True))
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    node_s, arc_start, arc_end = _node_positions(s, leg, theta, tan_len, turn_radius_m)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    return Centreline(s, xy, tangent, normal, curv, edge.astype(np.int64), node_s, arc_start, arc_end, tan_len)


def _arc(corner: np.ndarray, u_in: np.ndarray, theta: float, radius: float, step: float,
         edges: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Samples of the fillet arc at ``corner`` turning by ``theta`` (rad, > 0 left) from direction ``u_in``."""
    sgn = np.sign(theta)
    left = np.array([-u_in[1], u_in[0]])
    start = corner - u_in * radius * np.tan(abs(theta) / 2)
    centre = start + sgn * radius * left
    n = max(int(np.ceil(radius * abs(theta) / step)), 2)
    phi = np.arange(n) / n * theta  # heading change from the arc's start
    head0 = np.arctan2(u_in[1], u_in[0])
    heading = head0 + phi
    tangent = np.stack([np.cos(heading), np.sin(heading)], 1)
    rel = start - centre
    c, s_ = np.cos(phi), np.sin(phi)
    xy = centre + np.stack([c * rel[0] - s_ * rel[1], s_ * rel[0] + c * rel[1]], 1)
    edge = np.where(np.arange(n) < n / 2, edges[0], edges[1])
    return xy, tangent, np.full(n, sgn / radius), edge


def _node_positions(s: np.ndarray, leg: np.ndarray, theta: np.ndarray, tan_len: np.ndarray,
                    radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arc_len = radius * np.abs(theta)
    node_s = np.zeros(len(theta))
    arc_start = np.zeros(len(theta))
    pos = 0.0
    for k in range(len(theta)):
        if k > 0:
            pos += leg[k - 1] - tan_len[k - 1] - tan_len[k]
        arc_start[k] = pos
        node_s[k] = pos + arc_len[k] / 2
        pos += arc_len[k]
    node_s[-1] = arc_start[-1] = s[-1]
    return node_s, arc_start, arc_start + arc_len
