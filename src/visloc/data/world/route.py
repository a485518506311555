"""Vehicle routes through the street graph of one split, and the smooth centre line of a route.

The street graph: nodes are the ends of the streets (intersections, or the city's edge), merged when closer
than ``tol_m``; edges are streets. A route is a walk along connected streets (no U-turns, unused streets
first) from a random node. Its centre line is made smooth by a circular arc of radius ``turn_radius_m`` at each
turn, tangent to both streets' centre lines (a fillet), and sampled densely: positions, unit tangents, left
normals and signed curvature (positive for a left turn) at a spacing of ``step_m`` of arc length ``s``.
World frame: metres, x east, y north (the ground plane).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visloc.data.scene.places import Street


@dataclass(frozen=True)
class StreetGraph:
    """Streets as edges between merged end points.

    Attributes:
        nodes: float64 [V, 2] node positions (metres).
        edges: (street id, node a, node b, length m, width m) per street.
        node_half_width: float64 [V], half the widest street at each node (metres).
    """

    nodes: np.ndarray
    edges: tuple[tuple[int, int, int, float, float], ...]
    node_half_width: np.ndarray

    def incident(self, node: int) -> list[int]:
        """Indices into ``edges`` of the streets at ``node``."""
        return [k for k, e in enumerate(self.edges) if node in (e[1], e[2])]


def street_graph(streets: Sequence[Street], tol_m: float = 0.5) -> StreetGraph:
    """The graph of ``streets`` (ends closer than ``tol_m`` become one node)."""
    nodes: list[np.ndarray] = []

    def node_of(p: tuple[float, float]) -> int:
        q = np.asarray(p, np.float64)
        for i, n in enumerate(nodes):
            if np.linalg.norm(n - q) < tol_m:
                return i
        nodes.append(q)
        return len(nodes) - 1

    edges = []
    for st in streets:
        a, b = node_of(st.start), node_of(st.end)
        if a != b:
            edges.append((st.id, a, b, float(np.linalg.norm(np.subtract(st.end, st.start))), float(st.width_m)))
    half = np.zeros(len(nodes))
    for _, a, b, _, w in edges:
        half[a], half[b] = max(half[a], w / 2), max(half[b], w / 2)
    return StreetGraph(np.array(nodes, np.float64).reshape(-1, 2), tuple(edges), half)


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
    return Centreline(s, xy, tangent, normal, curv, edge.astype(np.int64), node_s, arc_start, arc_end)


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
