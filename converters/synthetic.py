"""Procedural RGB-D scenes with labels: the embedded default dataset of the demo and the tests.

Each frame is ray-cast from a pinhole camera into a room: a floor plane and walls (depth gradients),
3-8 objects (boxes, spheres, cylinders, flat polygon panels) at distinct depths, occluding each other
by depth. Each class has its own texture and hue (with per-instance variation), so classes are
learnable from appearance, and object boundaries are depth discontinuities. Depth imitates a
structured-light sensor: noise growing with range squared, millimetre quantisation, holes along depth
edges, dropout blobs and no return beyond the sensor's range. Deterministic in (seed, split, index).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator
from dataclasses import dataclass

import click
import cv2
import numpy as np

from converters.base import SIZE, Converter, LabelSet, SourceInfo, WorkUnit, make_meta
from datakit.schema import Sample

CLASSES = ("floor", "wall", "box", "sphere", "cylinder", "panel")
FLOOR, WALL, BOX, SPHERE, CYLINDER, PANEL = range(len(CLASSES))
OBJECT_CLASSES = (BOX, SPHERE, CYLINDER, PANEL)
# Hue (0-1), saturation, value of each class; instances vary around them.
CLASS_COLOUR = {
    FLOOR: (0.08, 0.45, 0.55),
    WALL: (0.12, 0.12, 0.80),
    BOX: (0.00, 0.70, 0.75),
    SPHERE: (0.60, 0.65, 0.80),
    CYLINDER: (0.33, 0.60, 0.65),
    PANEL: (0.80, 0.50, 0.75),
}
DEPTH_SCALE = 0.001  # stored in millimetres
MAX_RANGE_M = 8.0  # no return beyond this (structured-light sensors stop at ~4-10 m)
SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticConfig:
    num: int = 64
    val: int = 0
    size: tuple[int, int] = (320, 240)
    seed: int = 0
    per_unit: int = 4


class SyntheticConverter(Converter):
    name = "synthetic"
    Config = SyntheticConfig
    help = "Procedural RGB-D scenes with labels (the built-in demo and test data)."
    params = [
        click.Option(
            ["--num"],
            type=click.IntRange(min=0),
            default=64,
            show_default=True,
            help="Number of train samples.",
        ),
        click.Option(
            ["--val"],
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Number of val samples (a second split).",
        ),
        click.Option(
            ["--size"], type=SIZE, default="320x240", show_default=True, help="Image size WxH."
        ),
        click.Option(["--seed"], type=click.IntRange(min=0), default=0, show_default=True),
        click.Option(
            ["--per-unit"],
            type=click.IntRange(min=1),
            default=4,
            show_default=True,
            help="Samples per work unit (parallelism grain).",
        ),
    ]

    config: SyntheticConfig

    def units(self) -> list[WorkUnit]:
        c = self.config
        out = []
        for split, n in (("train", c.num), ("val", c.val)):
            for start in range(0, n, c.per_unit):
                stop = min(n, start + c.per_unit)
                out.append(WorkUnit(f"{split}[{start}:{stop}]", split, (start, stop)))
        return out

    def convert(self, unit: WorkUnit) -> Iterator[Sample]:
        start, stop = unit.payload
        for index in range(start, stop):
            yield render_sample(self.config, unit.split, index)

    def info(self) -> SourceInfo:
        return SourceInfo(
            source="synthetic",
            depth_unit="m",
            depth_scale=DEPTH_SCALE,
            labels=LabelSet("synthetic6", CLASSES, 255),
        )


# --- scene ------------------------------------------------------------------------------------


@dataclass
class Hit:
    """Per-ray nearest surface so far: ray parameter (= z-depth), class, instance, normal, local uv."""

    t: np.ndarray
    cls: np.ndarray
    inst: np.ndarray
    normal: np.ndarray
    uv: np.ndarray

    idx: np.ndarray | None = None  # rays under test: all, or an object's screen bounding box

    def update(
        self, t: np.ndarray, cls: int, inst: int, normal: np.ndarray, uv: np.ndarray
    ) -> None:
        current = self.t if self.idx is None else self.t[self.idx]
        closer = (t > 1e-6) & (t < current)
        where = closer if self.idx is None else self.idx[closer]
        self.t[where] = t[closer]
        self.cls[where] = cls
        self.inst[where] = inst
        self.normal[where] = normal[closer] if normal.ndim == 2 else normal
        self.uv[where] = uv[closer]


def _rotation_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def _rotation_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def render_sample(cfg: SyntheticConfig, split: str, index: int) -> Sample:
    """One deterministic frame of ``split`` number ``index``."""
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES.get(split, 9), index])
    w, h = cfg.size
    rgb, depth_m, label, intr, pose = render_scene(rng, w, h)
    raw = sensor_depth(rng, depth_m)
    meta = make_meta(
        source="synthetic",
        id=f"{split}/{index:06d}",
        split=split,
        width=w,
        height=h,
        depth_scale=DEPTH_SCALE,
        depth_unit="m",
        intrinsics=intr,
        pose=pose,
        seed=cfg.seed,
        index=index,
    )
    return Sample(
        key=f"{split}_{index:06d}", split=split, rgb=rgb, meta=meta, depth=raw, label=label
    )


def render_scene(
    rng: np.random.Generator, w: int, h: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float], np.ndarray]:
    """Ray-cast a room: (rgb HxWx3 uint8, true depth HxW float m, label HxW uint8, intrinsics, pose)."""
    f = 0.85 * w
    intr = {"fx": f, "fy": f, "cx": (w - 1) / 2, "cy": (h - 1) / 2}
    pitch = rng.uniform(-0.15, 0.02)  # radians, negative = looking down (y is down)
    rot = _rotation_x(pitch)
    us, vs = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    d_cam = np.stack([(us - intr["cx"]) / f, (vs - intr["cy"]) / f, np.ones_like(us)], -1).reshape(
        -1, 3
    )
    d = d_cam @ rot.T  # world directions; t along d is the camera z-depth because d_cam.z == 1
    n = d.shape[0]
    hit = Hit(
        np.full(n, np.inf),
        np.zeros(n, np.uint8),
        np.zeros(n, np.int32),
        np.zeros((n, 3)),
        np.zeros((n, 2)),
    )

    cam_h = rng.uniform(1.2, 1.7)
    back = rng.uniform(4.5, 9.0)
    left, right = rng.uniform(1.6, 3.2), rng.uniform(1.6, 3.2)
    inst = 0
    # Floor y = cam_h, back wall z = back, side walls x = -left / right.
    planes = [
        (np.array([0.0, 1.0, 0.0]), cam_h, FLOOR, (0, 2)),
        (np.array([0.0, 0.0, 1.0]), back, WALL, (0, 1)),
        (np.array([1.0, 0.0, 0.0]), -left, WALL, (2, 1)),
        (np.array([1.0, 0.0, 0.0]), right, WALL, (2, 1)),
    ]
    for normal, c, cls, axes in planes:
        denom = d @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(np.abs(denom) > 1e-9, c / denom, np.inf)
        p = d * t[:, None]
        hit.update(t, cls, inst, -normal * np.sign(c), p[:, axes])
        inst += 1

    n_obj = int(rng.integers(3, 9))
    # Distinct depths: one per bin between 1.3 m and the back wall, so objects stand apart in depth.
    edges = np.linspace(1.3, back - 0.6, n_obj + 1)
    zs = rng.uniform(edges[:-1], edges[1:])
    half_fov = math.atan((w / 2) / f)
    for z in zs:
        cls = int(rng.choice(OBJECT_CLASSES))
        x = rng.uniform(-0.8, 0.8) * math.tan(half_fov) * z
        size = rng.uniform(0.35, 0.9)
        # Only rays inside the object's projected bounding box can hit it.
        hit.idx = _rays_in_box(x, z, 1.2 * size, 2.4 * size, cam_h, w, h, intr, rot)
        _add_object(rng, hit, d[hit.idx], cls, inst, x, z, size, cam_h, w, h, intr, rot)
        hit.idx = None
        inst += 1

    t = hit.t.reshape(h, w)
    label = hit.cls.reshape(h, w).astype(np.uint8)
    rgb = _shade(rng, hit, d, inst).reshape(h, w, 3)
    pose = np.eye(4)
    pose[:3, :3] = _rotation_y(rng.uniform(-math.pi, math.pi)) @ rot
    pose[:3, 3] = rng.uniform(-2, 2, size=3) * np.array([1.0, 0.0, 1.0]) + np.array([0, -cam_h, 0])
    return rgb, t, label, intr, pose


def _rays_in_box(
    x: float,
    z: float,
    radius: float,
    height: float,
    cam_h: float,
    w: int,
    h: int,
    intr: dict[str, float],
    rot: np.ndarray,
) -> np.ndarray:
    """Flat indices of the pixels inside the screen projection of a world-space box."""
    corners = np.array(
        [
            [x + sx * radius, cam_h - sy * height, z + sz * radius]
            for sx in (-1, 1)
            for sy in (0, 1)
            for sz in (-1, 1)
        ]
    )
    cam = corners @ rot
    cam[:, 2] = np.maximum(cam[:, 2], 0.05)
    u = intr["fx"] * cam[:, 0] / cam[:, 2] + intr["cx"]
    v = intr["fy"] * cam[:, 1] / cam[:, 2] + intr["cy"]
    u0, u1 = int(np.clip(np.floor(u.min()) - 1, 0, w)), int(np.clip(np.ceil(u.max()) + 2, 0, w))
    v0, v1 = int(np.clip(np.floor(v.min()) - 1, 0, h)), int(np.clip(np.ceil(v.max()) + 2, 0, h))
    vv, uu = np.meshgrid(np.arange(v0, v1), np.arange(u0, u1), indexing="ij")
    return (vv * w + uu).reshape(-1)


def _add_object(
    rng: np.random.Generator,
    hit: Hit,
    d: np.ndarray,
    cls: int,
    inst: int,
    x: float,
    z: float,
    size: float,
    cam_h: float,
    w: int,
    h: int,
    intr: dict[str, float],
    rot: np.ndarray,
) -> None:
    n = d.shape[0]
    if cls == SPHERE:
        r = size / 2
        c = np.array([x, cam_h - r * rng.uniform(1.0, 2.5), z])
        b = d @ c
        a = np.einsum("ij,ij->i", d, d)
        disc = b * b - a * (c @ c - r * r)
        with np.errstate(invalid="ignore"):
            t = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
        p = d * t[:, None]
        nrm = (p - c) / r
        uv = np.stack([np.arctan2(nrm[:, 0], -nrm[:, 2]), np.arcsin(np.clip(nrm[:, 1], -1, 1))], -1)
        hit.update(t, cls, inst, nrm, uv * r)
    elif cls == BOX:
        half = np.array([size / 2, size * rng.uniform(0.3, 0.8), size * rng.uniform(0.3, 0.6)])
        yaw = rng.uniform(-0.6, 0.6)
        centre = np.array([x, cam_h - half[1], z])
        ry = _rotation_y(yaw)
        o = -(centre @ ry)  # ray origin (camera at 0) in box frame
        db = d @ ry
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - o) / db
            t2 = (half - o) / db
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        tn, tf = tmin.max(1), tmax.min(1)
        t = np.where((tn <= tf) & (tf > 0), tn, np.inf)
        axis = tmin.argmax(1)
        nb = np.zeros((n, 3))
        nb[np.arange(n), axis] = -np.sign(db[np.arange(n), axis])
        pb = o + db * t[:, None]
        uv = np.where(
            axis[:, None] == 0,
            pb[:, [2, 1]],
            np.where(axis[:, None] == 1, pb[:, [0, 2]], pb[:, [0, 1]]),
        )
        hit.update(t, cls, inst, nb @ ry.T, uv)
    elif cls == CYLINDER:
        r = size * rng.uniform(0.25, 0.45)
        height = size * rng.uniform(1.0, 2.2)
        cx, cz = x, z
        a = d[:, 0] ** 2 + d[:, 2] ** 2
        b = d[:, 0] * cx + d[:, 2] * cz
        disc = b * b - a * (cx * cx + cz * cz - r * r)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
        y = d[:, 1] * t
        t = np.where((y >= cam_h - height) & (y <= cam_h), t, np.inf)
        p = d * t[:, None]
        nrm = np.stack([(p[:, 0] - cx) / r, np.zeros(n), (p[:, 2] - cz) / r], -1)
        uv = np.stack([np.arctan2(nrm[:, 0], -nrm[:, 2]) * r, p[:, 1]], -1)
        hit.update(t, cls, inst, nrm, uv)
        # Top cap, seen when looking down on it.
        with np.errstate(divide="ignore", invalid="ignore"):
            tc = (cam_h - height) / d[:, 1]
        pc = d * tc[:, None]
        inside = (pc[:, 0] - cx) ** 2 + (pc[:, 2] - cz) ** 2 <= r * r
        hit.update(
            np.where(inside, tc, np.inf), cls, inst, np.array([0.0, -1.0, 0.0]), pc[:, [0, 2]]
        )
    else:  # PANEL: a flat polygon standing on the floor, facing the camera with a small yaw
        k = int(rng.integers(3, 7))
        # Roughly regular vertex angles: no slivers.
        ang = (
            rng.uniform(0, 2 * math.pi) + np.arange(k) * 2 * math.pi / k + rng.uniform(-0.3, 0.3, k)
        )
        rad = size * rng.uniform(0.5, 1.0, k)
        centre = np.array([x, cam_h - size * 1.05, z])
        yaw = rng.uniform(-0.5, 0.5)
        ry = _rotation_y(yaw)
        local = np.stack([rad * np.cos(ang), rad * np.sin(ang), np.zeros(k)], -1)
        verts = local @ ry.T + centre
        cam = verts @ rot  # world -> camera frame (rot is orthonormal)
        px = np.stack(
            [
                intr["fx"] * cam[:, 0] / cam[:, 2] + intr["cx"],
                intr["fy"] * cam[:, 1] / cam[:, 2] + intr["cy"],
            ],
            -1,
        )
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(px * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        normal = ry @ np.array([0.0, 0.0, -1.0])
        denom = d @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (centre @ normal) / denom
        sub = mask.reshape(-1) if hit.idx is None else mask.reshape(-1)[hit.idx]
        t = np.where(sub > 0, t, np.inf)
        p = d * np.where(np.isfinite(t), t, 0.0)[:, None] - centre
        uv = np.stack([p @ (ry @ np.array([1.0, 0, 0])), p[:, 1]], -1)
        hit.update(t, cls, inst, np.broadcast_to(normal, (n, 3)).copy(), uv)


def _texture(cls: np.ndarray, uv: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Per-class pattern in [0, 1] from surface coordinates (m); ``params`` per-pixel scale."""
    u, v = uv[:, 0] * params, uv[:, 1] * params
    out = np.ones(len(cls))
    tex = {
        FLOOR: 0.75 + 0.25 * ((np.floor(u * 2) + np.floor(v * 2)) % 2),  # tiles
        WALL: 0.85 + 0.15 * (np.abs(np.sin(v * 9)) > 0.15),  # plaster bands
        BOX: 0.6
        + 0.4 * ((np.abs(np.sin(u * 14)) > 0.3) & (np.abs(np.sin(v * 14)) > 0.3)),  # crate grid
        SPHERE: 0.55 + 0.45 * ((np.sin(u * 18) * np.sin(v * 18)) < 0.5),  # polka dots
        CYLINDER: 0.6 + 0.4 * (np.sin(u * 30) > 0),  # vertical stripes
        PANEL: 0.6 + 0.4 * (np.sin((u + v) * 20) > 0),  # diagonal stripes
    }
    for c, pattern in tex.items():
        sel = cls == c
        out[sel] = pattern[sel]
    return out


def _shade(rng: np.random.Generator, hit: Hit, d: np.ndarray, n_inst: int) -> np.ndarray:
    colours = np.zeros((n_inst, 3))
    scales = np.zeros(n_inst)
    inst_cls = np.zeros(n_inst, np.int64)
    for i in range(n_inst):
        sel = hit.inst == i
        c = int(hit.cls[sel][0]) if sel.any() else 0
        inst_cls[i] = c
        hue, sat, val = CLASS_COLOUR[c]
        colours[i] = colorsys.hsv_to_rgb(
            (hue + rng.uniform(-0.04, 0.04)) % 1.0,
            float(np.clip(sat + rng.uniform(-0.15, 0.15), 0, 1)),
            float(np.clip(val + rng.uniform(-0.15, 0.15), 0, 1)),
        )
        scales[i] = rng.uniform(0.8, 1.25)
    base = colours[hit.inst]
    tex = _texture(hit.cls, hit.uv, scales[hit.inst])
    light = np.array([0.4, -0.8, -0.45])
    light /= np.linalg.norm(light)
    lambert = np.clip(hit.normal @ light, 0, 1)
    # Distance falloff gives the far wall a darker tone, as indoor lighting does.
    falloff = 1.0 / (1.0 + 0.04 * np.minimum(hit.t, 20.0))
    shade = (0.45 + 0.55 * lambert) * falloff
    rgb = base * tex[:, None] * shade[:, None] * 255.0
    rgb += rng.normal(0, 3.0, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def sensor_depth(rng: np.random.Generator, depth_m: np.ndarray) -> np.ndarray:
    """True depth (m) -> 16-bit millimetre codes of a structured-light sensor, 0 = no return.

    Noise sigma = 1.2 mm + 1.9 mm * (z - 0.4)^2 (Nguyen et al., Kinect axial noise); holes along
    depth edges (shadowing), random dropout blobs, nothing beyond :data:`MAX_RANGE_M`.
    """
    z = depth_m.copy()
    sigma = 0.0012 + 0.0019 * (z - 0.4) ** 2
    z = z + rng.normal(0.0, 1.0, z.shape) * sigma
    valid = np.isfinite(depth_m) & (depth_m < MAX_RANGE_M) & (z > 0)
    # Edge shadows: where neighbouring depths jump by > 5 %, drop most pixels on the far side.
    pad = np.pad(np.nan_to_num(depth_m, posinf=1e3), 1, mode="edge")
    jump = np.zeros(z.shape, bool)
    centre = pad[1:-1, 1:-1]
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        nb = pad[1 + dy : pad.shape[0] - 1 + dy, 1 + dx : pad.shape[1] - 1 + dx]
        jump |= (centre - nb) > 0.05 * nb
    jump = cv2.dilate(jump.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    valid &= ~(jump & (rng.random(z.shape) < 0.7))
    h, w = z.shape
    holes = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        centre_xy = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(2, max(3, w // 20))), int(rng.integers(2, max(3, h // 20))))
        cv2.ellipse(holes, centre_xy, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    valid &= holes == 0
    mm = np.where(valid, np.round(z / DEPTH_SCALE), 0)
    return np.clip(mm, 0, 65535).astype(np.uint16)
