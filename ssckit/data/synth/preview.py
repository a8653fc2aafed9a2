"""A picture of one dataset frame: camera image, stereo depth, and the voxel ground truth in 3D and from above.

Reads the frame through ssckit's dataset readers (so it shows what a model gets) and draws the voxels with a small
orthographic splatting renderer (numpy z-buffer), so no 3D plotting backend is needed.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssckit.data.labels import IGNORE


def voxel_render(target: np.ndarray, palette: np.ndarray, voxel_size: float = 0.2, width: int = 720,
                 height: int = 400, azimuth_deg: float = 35.0, elevation_deg: float = 38.0) -> np.ndarray:
    """Orthographic view (H, W, 3) uint8 of the labelled voxels (classes 1..N-1) of ``target`` (X, Y, Z), seen
    from behind-left of the sensor and above; faces are shaded by height and splat borders darkened."""
    idx = np.argwhere((target > 0) & (target != IGNORE))
    image = np.full((height, width, 3), 255, np.uint8)
    if not len(idx):
        return image
    p = (idx + 0.5) * voxel_size
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    d = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), -np.sin(e)])  # viewing direction
    right = np.array([np.sin(a), -np.cos(a), 0.0])
    up = np.cross(right, d)
    unit = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
    corners = unit * np.array(target.shape) * voxel_size  # (8, 3) corners of the grid box
    sx, sy = corners @ right, corners @ up
    scale = 0.95 * min(width / np.ptp(sx), height / np.ptp(sy))
    u = (p @ right - sx.min()) * scale + 0.025 * width
    v = (sy.max() - p @ up) * scale + 0.025 * height
    depth = p @ d
    half = max(int(np.ceil(voxel_size * scale * 0.75)), 1)
    shade = 0.65 + 0.35 * idx[:, 2] / max(target.shape[2] - 1, 1)
    offsets = [(du, dv) for du in range(-half, half + 1) for dv in range(-half, half + 1)]
    pix, dep, col = [], [], []
    for du, dv in offsets:  # one pass per splat offset, vectorised over voxels
        border = 0.7 if max(abs(du), abs(dv)) == half else 1.0
        uu, vv = np.round(u).astype(int) + du, np.round(v).astype(int) + dv
        ok = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
        pix.append(vv[ok] * width + uu[ok])
        dep.append(depth[ok])
        col.append(palette[target[tuple(idx[ok].T)]] * (shade[ok] * border)[:, None])
    pix, dep, col = np.concatenate(pix), np.concatenate(dep), np.concatenate(col)
    order = np.lexsort((dep, pix))  # per pixel, nearest first
    first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]]
    image.reshape(-1, 3)[pix[first]] = np.clip(col[first], 0, 255).astype(np.uint8)
    return image


def bird_eye(target: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Top-most labelled class per column (X up, Y to the left), grey where the whole column is invalid."""
    occ = (target > 0) & (target != IGNORE)
    top = target.shape[2] - 1 - np.argmax(occ[:, :, ::-1], axis=2)
    cls = np.take_along_axis(target, top[..., None], axis=2)[..., 0]
    img = np.where(occ.any(axis=2)[..., None], palette[np.where(occ.any(axis=2), cls, 0)], 255).astype(np.uint8)
    img[(target == IGNORE).all(axis=2)] = 150
    return img[::-1, ::-1]  # rows: x far -> near; cols: y left -> right


def save_preview(root: str | os.PathLike, out: str | os.PathLike, dataset: str = "semantic_kitti",
                 sequence: str | None = None, frame: str | None = None) -> Path:
    """Write a PNG of one frame (default: the first frame of the first sequence) of the dataset at ``root``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from ssckit.data.datasets import DATASETS

    ds = DATASETS[dataset](root, sequences=None if sequence is None else [sequence],
                           depth_root=Path(root) / "depth")
    f = ds.frames[0] if frame is None else next(x for x in ds.frames if x.frame == frame)
    image, depth, target = ds.read_image(f), ds.read_depth(f), ds.voxel_target(f)
    palette = np.array(ds.labels.palette, dtype=np.float64)
    aspect = image.shape[0] / image.shape[1]
    fig = plt.figure(figsize=(10, 10 * 2 * aspect + 4.6), dpi=100)
    grid = fig.add_gridspec(3, 2, height_ratios=[10 * aspect, 10 * aspect, 4.2], width_ratios=[1.6, 1], hspace=0.1,
                            wspace=0.02)
    panels = [(grid[0, :], image, f"camera (image_{2 if dataset == 'semantic_kitti' else '00'})", None),
              (grid[1, :], np.clip(depth, 0, 60), "stereo depth (m, clipped at 60)", "magma_r"),
              (grid[2, 0], voxel_render(target, palette), "voxel ground truth (valid, occupied)", None),
              (grid[2, 1], bird_eye(target, palette), "ground truth from above (grey: invalid)", None)]
    for spec, img, title, cmap in panels:
        ax = fig.add_subplot(spec)
        ax.imshow(img, cmap=cmap, interpolation="nearest" if img.ndim == 3 else "bilinear")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    present = [c for c in np.unique(target) if 0 < c < ds.labels.num_classes]
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[c] / 255) for c in present]
    fig.legend(handles, [ds.labels.class_names[c] for c in present], loc="lower center", ncol=min(len(present), 9),
               fontsize=8, frameon=False)
    fig.suptitle(f"ssckit synth: {dataset} sequence {f.sequence}, frame {f.frame}", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    with Image.open(tmp) as im:  # a 256-colour palette keeps the file small
        im.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
    tmp.unlink()
    return out
