"""One figure per frame: input image | ground truth | prediction | errors, seen from the camera and from above.

Layout (columns are dropped when their input is missing): the first column holds the input image and, below it,
the legend of the classes present and of the error colours; each further column shows one voxel scene (ground
truth, prediction, errors) in one row per view: ``camera`` (through the true calibration, from the camera pose),
``oblique`` (the whole grid from behind and above the ego car) and ``bev`` (straight down, x forward = up).
Oblique and bird's-eye panels carry the camera's horizontal field of view as dashed lines. Everything is drawn
with matplotlib's Agg backend; no display is needed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ssckit.data.geometry import BASE_VOXEL_SIZE, IMAGE_SIZE_SEMANTIC_KITTI, VOXEL_ORIGIN
from ssckit.data.labels import IGNORE, LabelTable
from ssckit.vis.voxels import Camera, grid_corners, orbit_camera, render_voxels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VIEWS = ("camera", "oblique", "bev")
# error codes (ids of the errors grid; 1..N-1 = correct voxel of that class)
ERROR_WRONG_CLASS, ERROR_FALSE_POSITIVE, ERROR_FALSE_NEGATIVE = 252, 253, 254
ERROR_COLOURS = {
    ERROR_WRONG_CLASS: ("wrong class", (255, 160, 0)),
    ERROR_FALSE_POSITIVE: ("false positive (GT empty)", (220, 30, 30)),
    ERROR_FALSE_NEGATIVE: ("false negative (missed)", (30, 80, 230)),
}
MUTED_GREY, MUTE = np.array([205.0, 205.0, 205.0]), 0.6  # correct voxels: class colour blended 60 % into grey
BACKGROUND = (255, 255, 255)
_PAD, _TITLE, _DPI = 6, 20, 100


def class_colours(labels: LabelTable) -> np.ndarray:
    """(256, 3) uint8: the dataset palette for learning ids, black elsewhere."""
    out = np.zeros((256, 3), dtype=np.uint8)
    out[: labels.num_classes] = np.asarray(labels.palette, dtype=np.uint8)
    return out


def error_codes(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-voxel error code (uint8, same shape): 0 = nothing to draw (both empty, or GT ignored), c = correct voxel
    of class c, ERROR_WRONG_CLASS, ERROR_FALSE_POSITIVE (GT empty, predicted occupied), ERROR_FALSE_NEGATIVE."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = gt != IGNORE
    gt_occ, pred_occ = valid & (gt != 0), valid & (pred != 0) & (pred != IGNORE)
    out = np.zeros(gt.shape, dtype=np.uint8)
    both = gt_occ & pred_occ
    correct = both & (gt == pred)
    out[correct] = gt[correct]
    out[both & ~correct] = ERROR_WRONG_CLASS
    out[pred_occ & ~gt_occ] = ERROR_FALSE_POSITIVE
    out[gt_occ & ~pred_occ] = ERROR_FALSE_NEGATIVE
    return out


def error_palette(labels: LabelTable) -> np.ndarray:
    """(256, 3) uint8 colours of :func:`error_codes`: muted class colours for correct voxels, flat error colours."""
    out = class_colours(labels).astype(float)
    out = (1 - MUTE) * out + MUTE * MUTED_GREY
    for code, (_, rgb) in ERROR_COLOURS.items():
        out[code] = rgb
    return np.round(out).astype(np.uint8)


def classes_present(labels: LabelTable, *grids: np.ndarray | None) -> list[int]:
    """Learning ids 1..N-1 occurring in any of ``grids`` (empty and ignore are not classes), ascending."""
    seen = np.zeros(256, dtype=bool)
    for g in grids:
        if g is not None:
            seen[np.unique(np.asarray(g))] = True
    return [c for c in range(1, labels.num_classes) if seen[c]]


@dataclass
class Panel:
    """One image of the figure: ``rgb`` (H, W, 3) uint8, its ``title`` and dashed overlay ``lines``
    (each an (n, 2) array of pixel coordinates)."""

    title: str
    rgb: np.ndarray
    lines: list[np.ndarray] = field(default_factory=list)


def _check_grid(grid: np.ndarray | None, labels: LabelTable, what: str) -> np.ndarray | None:
    if grid is None:
        return None
    grid = np.asarray(grid)
    if grid.ndim != 3:
        raise ValueError(f"{what} must be an (X, Y, Z) grid, got shape {grid.shape}")
    bad = (grid >= labels.num_classes) & (grid != IGNORE)
    if (grid < 0).any() or bad.any():
        raise ValueError(f"{what} holds ids outside 0..{labels.num_classes - 1} / 255 ({labels.name})")
    return grid.astype(np.uint8, copy=False)


def view_camera(view: str, K: np.ndarray, Tr: np.ndarray, image_size: tuple[int, int], grid: Sequence[int],
                voxel_size: float, origin: Sequence[float], panel_width: int) -> Camera:
    """The camera of one view: ``camera`` = the calibrated camera scaled to ``panel_width``; ``oblique`` / ``bev``
    = virtual cameras framing the whole grid."""
    if view == "camera":
        W, H = image_size
        return Camera(np.asarray(K, float), np.asarray(Tr, float), W, H).resized(panel_width / W)
    if view == "oblique":
        return orbit_camera(grid, voxel_size, origin, panel_width, azimuth_deg=30.0, elevation_deg=38.0)
    if view == "bev":
        return orbit_camera(grid, voxel_size, origin, panel_width, azimuth_deg=0.0, elevation_deg=90.0,
                            distance=4.0)
    raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")


def fov_lines(K: np.ndarray, Tr: np.ndarray, image_size: tuple[int, int], grid: Sequence[int], voxel_size: float,
              origin: Sequence[float], view: Camera) -> list[np.ndarray]:
    """The calibrated camera's left and right image borders (at the principal row) as rays from the camera's
    footprint on the grid floor to the edge of the grid, projected into ``view``: up to two (2, 2) pixel segments."""
    cam = Camera(np.asarray(K, float), np.asarray(Tr, float), *image_size)
    centre = cam.centre.copy()
    centre[2] = origin[2]  # drawn on the floor of the grid, as in the papers' figures
    lo, hi = grid_corners(grid, voxel_size, origin)[[0, -1]]
    segments = []
    for u in (0.0, image_size[0] - 1.0):
        ray = cam.T[:3, :3].T @ np.linalg.solve(cam.K, [u, cam.K[1, 2], 1.0])
        ray[2] = 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            exits = np.where(ray[:2] != 0, (np.where(ray[:2] > 0, hi[:2], lo[:2]) - centre[:2]) / ray[:2], np.inf)
        t_exit = float(np.min(exits))
        if not np.isfinite(t_exit) or t_exit <= 0:
            continue
        uv, z = view.project(np.stack([centre, centre + t_exit * ray]))
        if (z > 0).all():
            segments.append(uv)
    return segments


def render_panels(image: np.ndarray | None, gt: np.ndarray | None, pred: np.ndarray | None, labels: LabelTable,
                  K: np.ndarray, Tr: np.ndarray, views: Sequence[str] = ("camera", "oblique"),
                  panel_width: int = 560, voxel_size: float = BASE_VOXEL_SIZE,
                  origin: Sequence[float] = VOXEL_ORIGIN,
                  image_size: tuple[int, int] | None = None) -> tuple[Panel | None, list[list[Panel]]]:
    """Render every voxel panel: (input-image panel or None, rows[view][scene]) with scenes GT, prediction, errors
    (errors only when both are given). ``image_size`` (W, H) of the calibrated camera defaults to the image's."""
    gt, pred = _check_grid(gt, labels, "gt"), _check_grid(pred, labels, "pred")
    scenes: list[tuple[str, np.ndarray, np.ndarray]] = []
    palette = class_colours(labels)
    if gt is not None:
        scenes.append(("Ground truth", gt, palette))
    if pred is not None:
        scenes.append(("Prediction", pred, palette))
    if gt is not None and pred is not None:
        scenes.append(("Errors", error_codes(gt, pred), error_palette(labels)))
    if not scenes:
        raise ValueError("render_panels needs a ground truth or a prediction grid")
    if not views or any(v not in VIEWS for v in views):
        raise ValueError(f"views must be a non-empty selection of {VIEWS}, got {tuple(views)}")
    grid = scenes[0][1].shape
    if image_size is None:
        image_size = IMAGE_SIZE_SEMANTIC_KITTI if image is None else (image.shape[1], image.shape[0])
    rows = []
    for view in views:  # a handful of views x scenes, each a vectorised render
        cam = view_camera(view, K, Tr, image_size, grid, voxel_size, origin, panel_width)
        lines = [] if view == "camera" else fov_lines(K, Tr, image_size, grid, voxel_size, origin, cam)
        rows.append([Panel(f"{name} ({view})", render_voxels(ids, colours, cam, voxel_size, origin,
                                                             background=BACKGROUND).rgb, lines)
                     for name, ids, colours in scenes])
    image_panel = None
    if image is not None:
        from PIL import Image

        W, H = image_size
        im = Image.fromarray(np.asarray(image, dtype=np.uint8)).crop((0, 0, W, H))  # the calibrated (W, H) window
        h = rows[0][0].rgb.shape[0] if views and views[0] == "camera" else round(panel_width * H / W)
        image_panel = Panel("Input image", np.asarray(im.resize((panel_width, h), Image.BILINEAR)))
    return image_panel, rows


def make_figure(image_panel: Panel | None, rows: list[list[Panel]], labels: LabelTable, legend_classes: Sequence[int],
                show_errors: bool, title: str | None = None) -> Figure:
    """Lay the panels out at one figure pixel per panel pixel; the legend sits in the first column."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    col_w = max(p.rgb.shape[1] for row in rows for p in row)
    row_h = [max(p.rgb.shape[0] for p in row) for row in rows]
    n_cols = 1 + max(len(row) for row in rows)
    n_err = len(ERROR_COLOURS) + 1 if show_errors else 0
    legend_h = 18 * (-(-len(legend_classes) // 2) + -(-n_err // 2)) + (40 if show_errors else 0) + 36
    top = _TITLE + 4 if title else 0
    image_h = image_panel.rgb.shape[0] + _TITLE + _PAD if image_panel is not None else 0
    height = top + max(sum(h + _TITLE + _PAD for h in row_h), image_h + legend_h) + _PAD
    width = n_cols * (col_w + _PAD) + _PAD
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")

    def add_panel(panel: Panel, x: int, y: int) -> None:  # (x, y) = pixel top-left of the title line
        h, w = panel.rgb.shape[:2]
        ax = fig.add_axes((x / width, 1 - (y + _TITLE + h) / height, w / width, h / height))
        ax.imshow(panel.rgb, interpolation="nearest", aspect="auto")
        for seg in panel.lines:
            ax.plot(seg[:, 0], seg[:, 1], color="0.15", linestyle="--", linewidth=1.0)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_axis_off()
        fig.text((x + 2) / width, 1 - (y + _TITLE - 5) / height, panel.title, fontsize=10, va="baseline")

    if title:
        fig.text(_PAD / width, 1 - (_TITLE - 2) / height, title, fontsize=12, weight="bold", va="baseline")
    if image_panel is not None:
        add_panel(image_panel, _PAD, top)
    y = top
    for row, h in zip(rows, row_h):
        for c, panel in enumerate(row):
            add_panel(panel, _PAD + (c + 1) * (col_w + _PAD), y)
        y += h + _TITLE + _PAD

    handles = [Patch(facecolor=np.asarray(labels.palette[c]) / 255, edgecolor="0.3", label=labels.class_names[c])
               for c in legend_classes]
    y_leg = top + image_h
    if handles:
        fig.legend(handles=handles, title="classes present", loc="upper left", ncol=2, fontsize=9, frameon=False,
                   bbox_to_anchor=(_PAD / width, 1 - y_leg / height), alignment="left")
    if show_errors:
        err = [Patch(facecolor=MUTED_GREY / 255, edgecolor="0.3", label="correct (class colour, muted)")]
        err += [Patch(facecolor=np.asarray(rgb) / 255, edgecolor="0.3", label=name)
                for name, rgb in ERROR_COLOURS.values()]
        y_err = y_leg + 18 * -(-len(handles) // 2) + (36 if handles else 0)
        fig.legend(handles=err, title="errors (GT-ignored voxels hidden)", loc="upper left", ncol=1, fontsize=9,
                   frameon=False, bbox_to_anchor=(_PAD / width, 1 - y_err / height), alignment="left")
    return fig


def frame_figure(image: np.ndarray | None, gt: np.ndarray | None, pred: np.ndarray | None, labels: LabelTable,
                 K: np.ndarray, Tr: np.ndarray, title: str | None = None,
                 views: Sequence[str] = ("camera", "oblique"), panel_width: int = 560,
                 voxel_size: float = BASE_VOXEL_SIZE, origin: Sequence[float] = VOXEL_ORIGIN,
                 image_size: tuple[int, int] | None = None) -> Figure:
    """The figure of one frame (see :func:`render_frame`), not yet saved."""
    image_panel, rows = render_panels(image, gt, pred, labels, K, Tr, views, panel_width, voxel_size, origin,
                                      image_size)
    return make_figure(image_panel, rows, labels, classes_present(labels, gt, pred),
                       show_errors=gt is not None and pred is not None, title=title)


def render_frame(image: np.ndarray | None, gt: np.ndarray | None, pred: np.ndarray | None, labels: LabelTable,
                 K: np.ndarray, Tr: np.ndarray, out_path: str | os.PathLike, title: str | None = None,
                 views: Sequence[str] = ("camera", "oblique"), panel_width: int = 560,
                 voxel_size: float = BASE_VOXEL_SIZE, origin: Sequence[float] = VOXEL_ORIGIN,
                 image_size: tuple[int, int] | None = None) -> Path:
    """Render one frame (input image, GT, prediction, errors; camera and oblique views; legend) to a PNG.

    ``image`` uint8 (H, W, 3) or None; ``gt`` / ``pred`` uint8 (X, Y, Z) learning ids (0 empty, 255 ignore = drawn
    as empty) or None, at least one given; ``K`` (3, 3) = P2[:3, :3]; ``Tr`` (4, 4) LiDAR -> camera;
    ``image_size`` (W, H) of the calibrated image (default: the image's, else 1220 x 370; a larger image is
    cropped to its top-left (W, H)). ``views`` from :data:`VIEWS`, one row each. Returns the PNG path.
    """
    fig = frame_figure(image, gt, pred, labels, K, Tr, title, views, panel_width, voxel_size, origin, image_size)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI, facecolor="white")
    return out
