"""A synthetic street scene for the render benchmark and the documentation figure (no data needed).

``python -m ssckit.vis.demo OUT.png`` writes the example figure; ``python -m ssckit.vis.demo --bench`` times
:func:`ssckit.vis.figure.render_frame` on the scene (and on the real sample frame's labelled LiDAR points when
``--real-root`` is given).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ssckit.data.labels import IGNORE, SEMANTIC_KITTI, LabelTable

# SemanticKITTI learning ids
CAR, PERSON, ROAD, PARKING, SIDEWALK, BUILDING, FENCE, VEGETATION, TRUNK, TERRAIN, POLE, SIGN = (
    1, 6, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19)

# K of KITTI odometry sequences 04-12 and an idealised LiDAR -> camera transform (camera 8 cm below, 27 cm behind)
DEMO_K = np.array([[707.0912, 0.0, 601.8873], [0.0, 707.0912, 183.1104], [0.0, 0.0, 1.0]])
DEMO_TR = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27], [0.0, 0.0, 0.0, 1.0]])
DEMO_IMAGE_SIZE = (1220, 370)


def synthetic_street(grid: Sequence[int] = (256, 256, 32), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) uint8 learning-id grids of a street along x (SemanticKITTI classes, 0.2 m voxels,
    ground at k = 1): road, sidewalks, buildings, fences, trees, poles, signs, cars and a person; unobserved GT
    voxels behind the buildings are 255. The prediction is the GT with typical mistakes: shifted cars, misread
    vegetation, thickened walls and a missed far end. ~110 k occupied GT voxels at full size (a SemanticKITTI
    frame averages ~105 k: the class frequencies over 3,834 training frames)."""
    X, Y, Z = grid
    rng = np.random.default_rng(seed)
    gt = np.zeros(grid, dtype=np.uint8)
    yc = Y // 2
    s = Y / 256  # lateral scale so a smaller grid keeps the layout
    road_w, walk_w = int(32 * s), int(16 * s)
    band = road_w + walk_w + int(12 * s)  # observed ground: road, sidewalks and a terrain strip; unobserved beyond
    gt[:, : max(yc - band - 6, 0), :] = IGNORE
    gt[:, yc + band + 6:, :] = IGNORE
    gt[:, yc - band: yc + band, 1] = TERRAIN
    gt[:, yc - road_w: yc + road_w, 1] = ROAD
    gt[: X // 3, yc + road_w - int(10 * s): yc + road_w, 1] = PARKING
    for side in (-1, 1):  # the two sidewalks, one voxel higher than the road
        lo = yc + road_w if side > 0 else yc - road_w - walk_w
        gt[:, lo: lo + walk_w, 1:3] = SIDEWALK
    bld_lo = (yc + road_w + walk_w + int(6 * s), yc - road_w - walk_w - int(6 * s))
    x = int(rng.integers(4, 20))
    while x < X - 10:  # buildings with gaps, both sides (a handful of objects, not voxels)
        length, height = int(rng.integers(30, 70)), int(rng.integers(14, Z))
        depth = int(rng.integers(10, 30 * s + 11))
        for side, near in zip((1, -1), bld_lo):
            ys = slice(near, near + depth) if side > 0 else slice(max(near - depth, 0), near)
            gt[x: x + length, ys, 1:height] = BUILDING
            gt[x + 2: x + length - 2, ys, 1:height][:, 2:-2, :] = IGNORE  # unseen inside / behind the facade
        x += length + int(rng.integers(6, 20))
    for side in (1, -1):  # fences along the sidewalk
        yf = yc + side * (road_w + walk_w + 2)
        gt[X // 2: X // 2 + 40, yf, 2:7] = FENCE
    for _ in range(14):  # trees: trunk + crown
        tx = int(rng.integers(5, X - 5))
        ty = yc + int(rng.choice([-1, 1])) * (road_w + walk_w // 2)
        gt[tx, ty, 3:12] = TRUNK
        ii, jj, kk = np.ogrid[-6:7, -6:7, -5:6]
        crown = ii**2 + jj**2 + kk**2 * 1.5 <= 36
        xs, ys = slice(max(tx - 6, 0), tx + 7), slice(ty - 6, ty + 7)
        sub = gt[xs, ys, 10:21]
        sub[crown[: sub.shape[0], : sub.shape[1], : sub.shape[2]] & (sub != TRUNK)] = VEGETATION
    for _ in range(10):  # poles with a sign on some
        px = int(rng.integers(5, X - 5))
        py = yc + int(rng.choice([-1, 1])) * (road_w + 2)
        gt[px, py, 3:25] = POLE
        if rng.random() < 0.5:
            gt[px, py - 2: py + 3, 20:24] = SIGN
    for _ in range(8):  # parked and driving cars (4.2 x 1.8 x 1.5 m)
        cx = int(rng.integers(8, X - 25))
        cy = yc + int(rng.choice([-20, -8, 10, 24])) * s
        gt[cx: cx + 21, int(cy) - 4: int(cy) + 5, 2:10] = CAR
    gt[60: 62, yc + road_w + 4: yc + road_w + 6, 3:12] = PERSON

    pred = gt.copy()
    pred[pred == IGNORE] = 0
    pred[:, :, 1][gt[:, :, 1] == IGNORE] = TERRAIN  # the model guesses ground where the GT was never observed
    cars = pred == CAR
    pred[cars] = 0
    pred[np.roll(cars, 2, axis=0)] = CAR  # cars predicted 0.4 m too far
    veg = pred == VEGETATION
    pred[veg & (rng.random(grid) < 0.3)] = TERRAIN
    walls = pred == BUILDING
    pred[np.roll(walls, 1, axis=1) & (pred == 0)] = BUILDING  # walls one voxel too thick
    pred[int(0.8 * X):, :, 3:] = 0  # far end missed above the ground
    return gt, pred


def pseudo_photo(gt: np.ndarray, labels: LabelTable = SEMANTIC_KITTI) -> np.ndarray:
    """A stand-in input image (H, W, 3): the GT seen by the demo camera in dull material colours under a sky."""
    from ssckit.data.geometry import VOXEL_ORIGIN
    from ssckit.vis.voxels import Camera, render_voxels

    tones = np.full((256, 3), 120, dtype=np.uint8)
    tones[: labels.num_classes] = (0.35 * np.asarray(labels.palette) + 0.65 * np.array([128, 120, 110])).round()
    W, H = DEMO_IMAGE_SIZE
    out = render_voxels(gt, tones, Camera(DEMO_K, DEMO_TR, W, H), 0.2, VOXEL_ORIGIN, outline=0.0)
    sky = np.linspace([150, 185, 225], [225, 235, 245], H)[:, None, :]  # (H, 1, 3)
    return np.where(np.isinf(out.depth)[..., None], sky, out.rgb).astype(np.uint8)


def labelled_scan_grid(real_root: str | Path) -> np.ndarray:
    """Learning-id grid of the real sample frame's labelled LiDAR points (the scan voxelised; a sparse scene)."""
    from ssckit.data.datasets import FrameId, SemanticKITTI
    from ssckit.data.geometry import points_to_voxel_indices

    ds = SemanticKITTI(real_root, sequences=["08"])
    f = FrameId("08", "001000")
    points = ds.read_scan(f)
    sem, _ = ds.read_point_labels(f, len(points))
    idx, ok = points_to_voxel_indices(points[:, :3], (256, 256, 32), 0.2)
    grid = np.zeros((256, 256, 32), dtype=np.uint8)
    grid[tuple(idx[ok].T)] = SEMANTIC_KITTI.to_learning(sem[ok])
    return grid


def benchmark(repeats: int = 3, real_root: str | Path | None = None, out_dir: str | Path = "/tmp") -> dict[str, float]:
    """Wall seconds per :func:`render_frame` call (best of ``repeats``; CPU seconds printed too), on the synthetic
    street and optionally the real frame. Rendering is single-threaded numpy + Agg."""
    from ssckit.vis.figure import render_frame

    gt, pred = synthetic_street()
    image = pseudo_photo(gt)
    cases = {"synthetic street (image + GT + prediction + errors)": (image, gt, pred)}
    if real_root is not None:
        scan = labelled_scan_grid(real_root)
        cases["real 08/001000 labelled scan (GT only)"] = (None, scan, None)
    times = {}
    for name, (im, g, p) in cases.items():  # a few named cases
        occupied = int(((g != 0) & (g != IGNORE)).sum())
        wall, cpu = np.inf, np.inf
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            render_frame(im, g, p, SEMANTIC_KITTI, DEMO_K, DEMO_TR, Path(out_dir) / "ssckit_render_bench.png",
                         image_size=DEMO_IMAGE_SIZE)
            wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
        times[name] = wall
        print(f"{name}: {occupied:,} occupied GT voxels, {wall:.2f} s per frame wall, {cpu:.2f} s CPU")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, help="write the example figure here")
    parser.add_argument("--bench", action="store_true", help="time render_frame")
    parser.add_argument("--real-root", type=Path, help="root of the real sample frame (sequences/08/...)")
    parser.add_argument("--panel-width", type=int, default=560)
    args = parser.parse_args(argv)
    if args.bench:
        benchmark(real_root=args.real_root)
    if args.out is not None:
        from ssckit.vis.figure import render_frame

        gt, pred = synthetic_street()
        render_frame(pseudo_photo(gt), gt, pred, SEMANTIC_KITTI, DEMO_K, DEMO_TR, args.out,
                     title="synthetic street (ssckit.vis.demo)", panel_width=args.panel_width,
                     image_size=DEMO_IMAGE_SIZE)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
