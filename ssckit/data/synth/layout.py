"""Content of one 40 m street block: ground classes painted into the raster and solid primitives.

Distances across the street are measured from the street axis (d >= 0, y = side * d): road [0, R), an optional
parking lane [R, C), the raised sidewalk [C, C + S) and the lots beyond. Sizes follow real street furniture and
vehicles (cars ~4.3 x 1.8 x 1.5 m, street lamps 6-8.5 m, sign plates at 2-2.7 m, building heights 5-18 m).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ssckit.data.synth.primitives import BOX, CYLINDER, SPHEROID, Primitives

if TYPE_CHECKING:
    from ssckit.data.synth.world import GroundMap

# which primitive wins a voxel claimed by several (higher wins)
PRIORITY = {48: 1, 50: 2, 52: 2, 51: 3, 70: 4, 71: 5, 80: 6, 99: 6, 81: 7}
THING_PRIORITY, PERSON_PRIORITY = 8, 9
PERSON_IDS = {30, 31, 32, 253, 254, 255}
FAR = 60.0  # m: how far lots reach from the street axis


@dataclass
class StreetProfile:
    """Cross-section and clutter of one sequence's street."""

    road_half: float
    sidewalk: float
    parking_p: float
    cross_p: float
    density: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "StreetProfile":
        return cls(road_half=rng.uniform(3.3, 5.0), sidewalk=rng.uniform(2.0, 4.0), parking_p=rng.uniform(0.3, 0.9),
                   cross_p=rng.uniform(0.1, 0.35), density=rng.uniform(0.7, 1.3))


class BlockBuilder:
    """Fills one block [x_start, x_start + length) of the street."""

    def __init__(self, rng: np.random.Generator, profile: StreetProfile, ground: "GroundMap", x_start: float,
                 length: float, first_instance: int, near_start: bool, lane_y: float) -> None:
        self.rng, self.p, self.ground = rng, profile, ground
        self.xa, self.xb = x_start, x_start + length
        self.next_instance = first_instance
        self.near_start = near_start
        self.lane_y = lane_y
        self._rows: list[tuple] = []

    # --- primitive helpers ---------------------------------------------------------------------------------------

    def _add(self, kind: int, centre: tuple, half: tuple, yaw: float, raw: int, instance: int = 0,
             velocity: tuple = (0.0, 0.0, 0.0), shade: float = 1.0) -> None:
        if raw in PERSON_IDS:
            prio = PERSON_PRIORITY
        else:
            prio = PRIORITY.get(raw, THING_PRIORITY)
        self._rows.append((kind, centre, half, yaw, velocity, raw, instance, shade, prio))

    def box(self, x: float, y: float, z0: float, z1: float, lx: float, ly: float, raw: int, yaw: float = 0.0,
            instance: int = 0, velocity: tuple = (0.0, 0.0, 0.0), shade: float = 1.0) -> None:
        self._add(BOX, (x, y, (z0 + z1) / 2), (lx / 2, ly / 2, (z1 - z0) / 2), yaw, raw, instance, velocity, shade)

    def cylinder(self, x: float, y: float, z0: float, z1: float, r: float, raw: int, shade: float = 1.0) -> None:
        self._add(CYLINDER, (x, y, (z0 + z1) / 2), (r, r, (z1 - z0) / 2), 0.0, raw, shade=shade)

    def spheroid(self, x: float, y: float, z: float, rxy: float, rz: float, raw: int, instance: int = 0,
                 velocity: tuple = (0.0, 0.0, 0.0), shade: float = 1.0) -> None:
        self._add(SPHEROID, (x, y, z), (rxy, rxy, rz), 0.0, raw, instance, velocity, shade)

    def instance(self) -> int:
        iid = self.next_instance % 65535 + 1
        self.next_instance += 1
        return iid

    def paint(self, x0: float, x1: float, side: int, d0: float, d1: float, raw: int) -> None:
        """Paint ground class ``raw`` on x in [x0, x1), d in [d0, d1) of one side (side=0: y in [d0, d1))."""
        y0, y1 = (d0, d1) if side >= 0 else (-d1, -d0)
        g = self.ground
        i0, i1 = (int(round((v - g.x0) / g.res)) for v in (x0, x1))
        j0, j1 = (int(round((v - g.y0) / g.res)) for v in (y0, y1))
        g.raw[max(i0, 0):max(i1, 0), max(j0, 0):max(j1, 0)] = raw

    # --- block ---------------------------------------------------------------------------------------------------

    def build(self) -> Primitives:
        rng, R = self.rng, self.p.road_half
        cross = (not self.near_start) and rng.random() < self.p.cross_p
        xc, wc = (self.xa + self.xb) / 2 + rng.uniform(-5, 5), rng.uniform(3.5, 4.5)
        self.paint(self.xa, self.xb, 0, -R, R, 40)
        segments = [(self.xa, xc - wc), (xc + wc, self.xb)] if cross else [(self.xa, self.xb)]
        for a, b in segments:  # dashed centre line (global phase: 3 m dash, 6 m gap) and solid edge lines
            for k in range(int(np.floor(a / 9.0)), int(np.ceil(b / 9.0))):
                lo, hi = max(a, 9.0 * k), min(b, 9.0 * k + 3.0)
                if hi > lo:
                    self.paint(lo, hi, 0, -0.07, 0.07, 60)
            for side in (1, -1):
                self.paint(a, b, side, R - 0.3, R - 0.18, 60)
        if cross:
            self.paint(xc - wc, xc + wc, 0, -FAR, FAR, 40)
            z0 = xc - wc - 4.0
            for y in np.arange(-R + 0.4, R - 0.6, 1.0):
                self.paint(z0, z0 + 3.0, 0, y, y + 0.5, 60)
        for side in (1, -1):
            self._side(side, segments, cross, xc, wc)
        self._traffic()
        return self._primitives()

    def _primitives(self) -> Primitives:
        rows = self._rows
        if not rows:
            z = np.zeros((0, 3))
            return Primitives(np.zeros(0, np.int8), z, z, np.zeros(0), z, np.zeros(0, np.uint16),
                              np.zeros(0, np.uint16), np.zeros(0, np.float32), np.zeros(0, np.int16))
        cols = list(zip(*rows))
        return Primitives(
            kind=np.array(cols[0], np.int8), centre=np.array(cols[1], np.float64), half=np.array(cols[2], np.float64),
            yaw=np.array(cols[3], np.float64), velocity=np.array(cols[4], np.float64), raw=np.array(cols[5], np.uint16),
            instance=np.array(cols[6], np.uint16), shade=np.array(cols[7], np.float32),
            priority=np.array(cols[8], np.int16),
        )

    def _side(self, s: int, segments: list[tuple[float, float]], cross: bool, xc: float, wc: float) -> None:
        rng, R, S = self.rng, self.p.road_half, self.p.sidewalk
        parking = rng.random() < self.p.parking_p
        C = R + (2.3 if parking else 0.0)
        if parking:
            self.paint(self.xa, self.xb, s, R, C, 44)
            if cross:
                self.paint(xc - wc, xc + wc, s, R, C, 40)
        for a, b in segments:
            self.paint(a, b, s, C, C + S, 48)
            n = int(np.ceil((b - a) / 20.0))
            edges = np.linspace(a, b, n + 1)
            for lo, hi in zip(edges[:-1], edges[1:]):
                self.box((lo + hi) / 2, s * (C + S / 2), -0.25, 0.15, hi - lo, S, 48)
            if parking:
                self._parked_vehicles(s, a + 1.0, b - 1.0, R + 1.15)
            self._furniture(s, a, b, C, S)
        lots = list(segments)
        if cross:  # sidewalks along the cross street; lots stop short of them
            for lo, hi in ((xc - wc - S, xc - wc), (xc + wc, xc + wc + S)):
                self.paint(lo, hi, s, C + S, FAR, 48)
                for d0 in (C + S, C + S + 20.0):
                    self.box((lo + hi) / 2, s * (d0 + 10.0), -0.25, 0.15, hi - lo, 20.0, 48)
            lots = [(segments[0][0], xc - wc - S), (xc + wc + S, segments[1][1])]
        for a, b in lots:
            self._lots(s, a, b, C + S)

    # --- vehicles and people ---------------------------------------------------------------------------------------

    def vehicle(self, x: float, y: float, yaw: float, raw: int, speed: float = 0.0) -> None:
        rng, iid = self.rng, self.instance()
        vel = (speed * np.cos(yaw), speed * np.sin(yaw), 0.0)
        shade = rng.uniform(0.8, 1.2)
        fwd = np.array([np.cos(yaw), np.sin(yaw)])
        static = raw if raw < 252 else {252: 10, 258: 18, 259: 20, 257: 13}.get(raw, 10)
        if static == 10:
            L, W, H = rng.uniform(3.9, 4.8), rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.55)
            self.box(x, y, 0.15, H - 0.45, L, W, raw, yaw, iid, vel, shade)
            cx, cy = np.array([x, y]) - 0.1 * L * fwd
            self.box(cx, cy, H - 0.45, H, 0.55 * L, 0.9 * W, raw, yaw, iid, vel, 0.75 * shade)
        elif static == 18:
            L = rng.uniform(5.0, 7.0)
            cx, cy = np.array([x, y]) + (L / 2 + 1.1) * fwd
            self.box(cx, cy, 0.4, 2.9, 2.2, 2.4, raw, yaw, iid, vel, shade)
            self.box(x, y, 0.8, rng.uniform(3.2, 3.8), L, 2.5, raw, yaw, iid, vel, shade)
        elif static in (20, 13):
            self.box(x, y, 0.3, 3.1, rng.uniform(9.0, 12.0), 2.55, raw, yaw, iid, vel, shade)
        elif static == 15:
            self.box(x, y, 0.1, 1.15, 2.0, 0.6, raw, yaw, iid, vel, shade)
        else:  # bicycle
            self.box(x, y, 0.0, 1.05, 1.75, 0.14, raw, yaw, iid, vel, shade)

    def person(self, x: float, y: float, raw: int, velocity: tuple = (0.0, 0.0, 0.0), base: float = 0.0,
               yaw: float = 0.0, iid: int | None = None) -> None:
        rng = self.rng
        iid = self.instance() if iid is None else iid
        h = rng.uniform(1.55, 1.9) if base == 0.0 else rng.uniform(0.55, 0.7)
        shade = rng.uniform(0.7, 1.2)
        self.box(x, y, base, base + h - 0.27, 0.35, 0.5, raw, yaw, iid, velocity, shade)
        self.spheroid(x, y, base + h - 0.13, 0.11, 0.13, raw, iid, velocity, shade)

    def rider(self, x: float, y: float, yaw: float, raw: int, speed: float) -> None:
        """A bicyclist / motorcyclist: the vehicle and its rider share the rider's label (raw ``raw``)."""
        iid = self.instance()
        vel = (speed * np.cos(yaw), speed * np.sin(yaw), 0.0)
        bike = (1.75, 0.14, 1.05) if raw in (31, 253) else (2.0, 0.6, 1.15)
        shade = self.rng.uniform(0.7, 1.2)
        self.box(x, y, 0.0, bike[2], bike[0], bike[1], raw, yaw, iid, vel, shade)
        self.person(x - 0.2 * np.cos(yaw), y - 0.2 * np.sin(yaw), raw, vel, base=bike[2], yaw=yaw, iid=iid)

    def _parked_vehicles(self, s: int, a: float, b: float, d: float) -> None:
        rng = self.rng
        x = a + rng.uniform(0, 3)
        while x < b - 3.0:
            kind = rng.choice([10, 18, 20, 15], p=[0.86, 0.06, 0.03, 0.05])
            length = {10: 4.4, 18: 8.5, 20: 11.0, 15: 2.0}[int(kind)]
            if x + length > b:
                break
            if rng.random() < 0.75 * min(self.p.density, 1.0):
                self.vehicle(x + length / 2, s * (d + rng.uniform(-0.12, 0.12)), rng.uniform(-0.04, 0.04) +
                             (0.0 if rng.random() < 0.7 else np.pi), int(kind))
            x += length + rng.uniform(1.0, 3.5)

    def _traffic(self) -> None:
        rng, R = self.rng, self.p.road_half
        for _ in range(rng.poisson(0.9 * self.p.density)):  # oncoming
            raw = int(rng.choice([252, 258, 259, 255], p=[0.82, 0.08, 0.04, 0.06]))
            x, y = rng.uniform(self.xa, self.xb), R / 2 + rng.uniform(-0.2, 0.2)
            if raw == 255:
                self.rider(x, y, np.pi, raw, rng.uniform(8, 12))
            else:
                self.vehicle(x, y, np.pi, raw, rng.uniform(7, 13))
        if self.xa > 15.0 and rng.random() < 0.35:  # ahead in the ego lane, faster than the ego
            self.vehicle(rng.uniform(self.xa, self.xb), self.lane_y, 0.0, 252, rng.uniform(13, 15))
        y_bike = self.lane_y - 1.4
        if y_bike > -R + 0.4 and rng.random() < 0.3:
            self.rider(rng.uniform(self.xa, self.xb), y_bike, 0.0, 253, rng.uniform(3.5, 5.5))

    # --- street furniture and lots ---------------------------------------------------------------------------------

    def _furniture(self, s: int, a: float, b: float, C: float, S: float) -> None:
        rng, dens = self.rng, self.p.density
        for x in np.arange(a + rng.uniform(2, 12), b - 1, rng.uniform(18, 30)):  # street lamps
            h = rng.uniform(6.0, 8.5)
            self.cylinder(x, s * (C + 0.35), 0.0, h, rng.uniform(0.09, 0.12), 80)
            self.box(x, s * (C + 0.35 - 0.8), h - 0.35, h - 0.2, 0.14, 1.6, 80)
        if rng.random() < 0.45:  # traffic sign
            x, y = rng.uniform(a + 1, b - 1), s * (C + 0.3)
            self.cylinder(x, y, 0.0, 2.9, rng.uniform(0.035, 0.05), 80)
            w = rng.uniform(0.55, 0.8)
            self.box(x - 0.06, y, 2.05, 2.05 + w, 0.05, w, 81, yaw=rng.uniform(-0.15, 0.15))
        for _ in range(rng.poisson(0.8 * dens)):  # street trees
            x = rng.uniform(a + 1, b - 1)
            self.tree(x, s * (C + min(1.0, S / 2)), small=True)
        for _ in range(rng.poisson(0.5 * dens)):  # bins and benches
            x, y = rng.uniform(a + 1, b - 1), s * (C + S - 0.5)
            if rng.random() < 0.5:
                self.box(x, y, 0.15, 1.1, 0.6, 0.6, 99)
            else:
                self.box(x, y, 0.15, 0.6, 1.8, 0.5, 99)
        for _ in range(rng.poisson(0.4 * dens)):  # parked bicycles
            self.vehicle(rng.uniform(a + 1, b - 1), s * (C + S - 0.4), rng.uniform(-0.3, 0.3), 11)
        for _ in range(rng.poisson(0.9 * dens)):  # pedestrians, some walking
            x, y = rng.uniform(a, b), s * (C + rng.uniform(0.5, S - 0.3))
            if rng.random() < 0.5:
                self.person(x, y, 254, velocity=(rng.choice([-1, 1]) * rng.uniform(0.8, 1.6), 0.0, 0.0))
            else:
                self.person(x, y, 30, base=0.15)
        if rng.random() < 0.12:  # bus shelter
            x = rng.uniform(a + 3, b - 3)
            self.box(x, s * (C + S - 0.8), 0.15, 2.5, 3.5, 1.4, 52)

    def tree(self, x: float, y: float, small: bool = False) -> None:
        rng = self.rng
        trunk = rng.uniform(1.8, 2.8) if small else rng.uniform(2.2, 4.0)
        r_xy = rng.uniform(1.2, 2.2) if small else rng.uniform(1.8, 3.6)
        r_z = rng.uniform(1.2, 2.0) if small else rng.uniform(1.6, 3.0)
        self.cylinder(x, y, -0.1, trunk + 0.5, rng.uniform(0.1, 0.16) if small else rng.uniform(0.15, 0.3), 71)
        self.spheroid(x, y, trunk + 0.7 * r_z, r_xy, r_z, 70, shade=rng.uniform(0.8, 1.15))

    def _lots(self, s: int, a: float, b: float, L0: float) -> None:
        rng = self.rng
        x = a
        while b - x >= 6.0:
            w = min(rng.uniform(12, 30), b - x)
            if b - (x + w) < 6.0:
                w = b - x
            kind = rng.choice(["buildings", "yard", "park", "parking", "green"], p=[0.36, 0.25, 0.14, 0.1, 0.15])
            getattr(self, f"_lot_{kind}")(s, x, x + w, L0)
            x += w

    def _building(self, s: int, a: float, b: float, d0: float, depth: float, height: float) -> None:
        self.box((a + b) / 2, s * (d0 + depth / 2), -0.3, height, b - a, depth, 50, shade=self.rng.uniform(0.7, 1.2))

    def _lot_buildings(self, s: int, a: float, b: float, L0: float) -> None:
        rng = self.rng
        setback = 0.0 if rng.random() < 0.5 else rng.uniform(0.5, 4.0)
        self.paint(a, b, s, L0, L0 + setback + 20.0, 49 if rng.random() < 0.6 else 72)
        x = a
        while b - x > 3.0:
            w = min(rng.uniform(8, 22), b - x)
            gap = rng.uniform(0.5, 2.5) if rng.random() < 0.5 else 0.0
            sb = setback + (rng.uniform(0, 1.0) if rng.random() < 0.3 else 0.0)
            self._building(s, x, x + max(w - gap, 2.0), L0 + sb, rng.uniform(10, 18), rng.uniform(5, 18))
            x += w

    def _fence(self, s: int, a: float, b: float, d: float) -> None:
        rng = self.rng
        h, gate = rng.uniform(1.0, 1.7), rng.uniform(a + 1.0, max(b - 2.5, a + 1.0))
        for lo, hi in ((a + 0.2, gate), (gate + 1.3, b - 0.2)):
            if hi - lo > 0.5:
                self.box((lo + hi) / 2, s * d, 0.0, h, hi - lo, 0.08, 51)

    def _lot_yard(self, s: int, a: float, b: float, L0: float) -> None:
        rng = self.rng
        setback = rng.uniform(7, 14)
        self.paint(a, b, s, L0, L0 + setback + 15.0, 72)
        if rng.random() < 0.6:
            self._fence(s, a, b, L0 + 0.3)
        else:
            self.box((a + b) / 2, s * (L0 + 0.8), 0.0, rng.uniform(1.0, 2.0), b - a - 0.6, 1.0, 70)
        for _ in range(rng.integers(0, 3)):
            self.tree(rng.uniform(a + 2, b - 2), s * (L0 + rng.uniform(3, setback - 2)))
        for _ in range(rng.integers(0, 4)):
            r = rng.uniform(0.5, 1.3)
            self.spheroid(rng.uniform(a + 1, b - 1), s * (L0 + rng.uniform(2, setback - 1)), 0.6 * r, r, 0.8 * r, 70)
        m = min(rng.uniform(2, 6), (b - a) / 4)
        self._building(s, a + m, b - m, L0 + setback, rng.uniform(8, 12), rng.uniform(5, 9))

    def _lot_park(self, s: int, a: float, b: float, L0: float) -> None:
        rng = self.rng
        self.paint(a, b, s, L0, FAR, 72)
        for _ in range(rng.integers(2, 7)):
            self.tree(rng.uniform(a + 1.5, b - 1.5), s * (L0 + rng.uniform(2.5, 25)))
        for _ in range(rng.integers(1, 6)):
            r = rng.uniform(0.5, 1.5)
            self.spheroid(rng.uniform(a + 1, b - 1), s * (L0 + rng.uniform(1.5, 20)), 0.6 * r, r, 0.8 * r, 70)
        if rng.random() < 0.4:
            self.box((a + b) / 2, s * (L0 + 0.3), 0.0, rng.uniform(0.5, 1.1), b - a - 1.0, 0.3, 52)
        if rng.random() < 0.5:
            self.box(rng.uniform(a + 2, b - 2), s * (L0 + 2.0), 0.0, 0.45, 1.8, 0.5, 99)

    def _lot_parking(self, s: int, a: float, b: float, L0: float) -> None:
        rng = self.rng
        depth = rng.uniform(14, 22)
        self.paint(a, b, s, L0, L0 + depth, 44)
        for d in (L0 + 3.0, L0 + depth - 3.0):
            for x in np.arange(a + 1.5, b - 1.5, 2.7):
                if rng.random() < 0.65:
                    self.vehicle(x, s * d, np.pi / 2 + rng.uniform(-0.05, 0.05) + (np.pi if rng.random() < 0.5
                                                                                    else 0.0), 10)
        self._fence(s, a, b, L0 + depth + 0.3)
        self._building(s, a + 1, b - 1, L0 + depth + rng.uniform(1, 4), rng.uniform(10, 16), rng.uniform(6, 15))

    def _lot_green(self, s: int, a: float, b: float, L0: float) -> None:
        rng = self.rng
        self.paint(a, b, s, L0, FAR, 72)
        self._fence(s, a, b, L0 + 0.3)
        self.box((a + b) / 2, s * (L0 + 1.3), 0.0, rng.uniform(1.2, 2.5), b - a - 0.4, rng.uniform(0.8, 1.5), 70)
        for _ in range(rng.integers(1, 4)):
            self.tree(rng.uniform(a + 2, b - 2), s * (L0 + rng.uniform(4, 12)))
