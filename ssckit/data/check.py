"""Scan a SemanticKITTI / SSCBench-KITTI-360 dataset root and list every problem with the file at fault.

Checked per sequence: calibration (SemanticKITTI; KITTI-360 when a drive holds a calib.txt), poses/times
(KITTI-360: pose.txt / cam0_to_world.txt when present), every SSC frame's voxel files (presence, exact size,
unpacked masks holding only 0/1, raw label ids in the label table; test sequences 11-21 need only .bin), the
left/right images (present, decodable, one size per sequence) and, when given (KITTI-360: by default
<root>/preprocess/labels if it exists), preprocessed targets and stereo depth maps (shape, dtype, NaN, negative
values). Missing pairs are reported both ways: voxels without an image, and an image of an SSC index
(every 5th) without voxels inside the range of the sequence's voxel frames (the real test sequences lack a few
frames at their ends). Problems are errors unless noted as warnings (things the readers do not need).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ssckit.data import io
from ssckit.data.labels import LUT_SIZE, LabelTable, get_label_table
from ssckit.errors import DataError, SsckitError

_FRAME = re.compile(r"^(\d{6})\.(bin|label|invalid|occluded|png|npy)$")
_TEST_SEQUENCES = {f"{i:02d}" for i in range(11, 22)}
_TARGET_SHAPES = {"1_1": (256, 256, 32), "1_2": (128, 128, 16), "1_8": (32, 32, 4)}


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # missing / size / format / unreadable / calib / depth / labels / target / mismatch / layout
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{'WARNING' if self.warning else 'ERROR'} [{self.kind}] {self.path}: {self.message}"


@dataclass
class CheckReport:
    root: str
    dataset: str
    problems: list[Problem] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    frames: int = 0
    files: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.warning]

    def add(self, path: str | os.PathLike, kind: str, message: str, warning: bool = False) -> None:
        self.problems.append(Problem(str(path), kind, message, warning))

    def summary(self) -> str:
        kinds = Counter(p.kind for p in self.errors)
        detail = f" ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})" if kinds else ""
        return (f"{self.dataset} at {self.root}: {len(self.sequences)} sequences, {self.frames} SSC frames, "
                f"{self.files} files checked: {len(self.errors)} errors{detail}, {len(self.warnings)} warnings")


class _Checker:
    def __init__(self, report: CheckReport, labels: LabelTable, label_root: Path | None, depth_root: Path | None):
        self.r, self.labels, self.label_root, self.depth_root = report, labels, label_root, depth_root
        known = np.zeros(1 << 16, dtype=bool)
        known[list(labels.learning_map)] = True
        self.known = known

    # --- single files ----------------------------------------------------------------------------------------------

    def _guard(self, path: Path, kind: str, fn) -> object | None:
        self.r.files += 1
        try:
            return fn()
        except DataError as e:
            if e.problem == "file not found":
                kind = "missing"
            elif "bytes" in e.problem:
                kind = "size"
            self.r.add(path, kind, e.problem)
        return None

    def mask(self, path: Path, allow_unpacked: bool) -> None:
        self._guard(path, "format", lambda: io.read_voxel_mask(path, allow_unpacked=allow_unpacked))

    def voxel_labels(self, path: Path) -> None:
        raw = self._guard(path, "format", lambda: io.read_voxel_label(path))
        if raw is not None:
            self.raw_ids(path, np.asarray(raw).reshape(-1), "voxel")

    def raw_ids(self, path: Path, raw: np.ndarray, what: str) -> None:
        counts = np.bincount(raw, minlength=1 << 16)
        bad = np.flatnonzero((counts > 0) & ~self.known)
        if len(bad):
            ids = ", ".join(str(i) for i in bad[:8])
            outside = " (beyond the lookup table)" if bad.max() >= LUT_SIZE else ""
            self.r.add(path, "labels", f"{int(counts[bad].sum()):,} {what}s hold raw ids that are not in the "
                                       f"{self.labels.name} label table: {ids}{outside}")

    def image(self, path: Path) -> tuple[int, int] | None:
        from PIL import Image

        self.r.files += 1
        if not path.is_file():
            self.r.add(path, "missing", "image not found")
            return None
        try:
            with Image.open(path) as im:
                size = im.size
                im.verify()  # walks every chunk and its CRC: catches truncation
            return size
        except Exception as e:  # PIL raises many types for broken files
            self.r.add(path, "unreadable", f"unreadable or truncated image ({type(e).__name__}: {e})")
            return None

    def depth(self, path: Path, image_size: tuple[int, int] | None) -> None:
        depth = self._guard(path, "depth", lambda: io.read_depth(path))
        if depth is None:
            return
        if not np.isfinite(depth).all():
            self.r.add(path, "depth", f"depth contains {int((~np.isfinite(depth)).sum())} infinite values")
        if image_size is not None and depth.shape != (image_size[1], image_size[0]):
            self.r.add(path, "mismatch", f"depth has shape {depth.shape}, but the image is {image_size[1]}x"
                                         f"{image_size[0]} (H x W)")

    def targets(self, seq: str, frame: str) -> None:
        folder = self.label_root / seq
        for scale, shape in _TARGET_SHAPES.items():
            path = folder / f"{frame}_{scale}.npy"
            if scale != "1_1" and not path.exists():
                continue  # coarser scales are optional (MonoScene writes 1_8, VoxFormer 1_2)
            self._guard(path, "target", lambda: io.read_target(path, shape, self.labels.num_classes))

    def scan(self, scan_path: Path, label_path: Path, has_label_dir: bool) -> None:
        points = self._guard(scan_path, "format", lambda: io.read_scan(scan_path))
        if points is None or not has_label_dir:
            return
        out = self._guard(label_path, "format", lambda: io.read_point_labels(label_path, len(points)))
        if out is not None:
            self.raw_ids(label_path, out[0].astype(np.int64), "point")


def _frames(folder: Path, ext: str) -> set[str]:
    if not folder.is_dir():
        return set()
    return {m.group(1) for p in folder.iterdir() if (m := _FRAME.match(p.name)) and m.group(2) == ext}


def _check_sequence(c: _Checker, layout: "_Layout", seq: str) -> None:
    r = c.r
    seq_dir = layout.seq_dir(seq)
    vox_dir = seq_dir / "voxels"
    by_ext = {ext: _frames(vox_dir, ext) for ext in layout.voxel_exts}
    frames = sorted(set().union(*by_ext.values()))
    if not frames:
        r.add(vox_dir, "missing", "no voxels/NNNNNN.bin files")
    r.frames += len(frames)
    labelled = bool(by_ext["label"])
    if layout.name == "semantic_kitti" and not labelled and seq not in _TEST_SEQUENCES and frames:
        r.add(vox_dir, "missing", f"sequence {seq} has no voxels/*.label ground truth (only test sequences 11-21 "
                                  "ship without labels)")
    required = {"bin"} | ({"label", "invalid", "occluded"} if labelled else set())
    for frame in frames:
        for ext in layout.voxel_exts:
            path = vox_dir / f"{frame}.{ext}"
            if frame not in by_ext[ext]:
                if ext in required:
                    r.files += 1
                    have = ", ".join(e for e in layout.voxel_exts if frame in by_ext[e])
                    r.add(path, "missing", f"voxel file missing (frame {frame} has {have})")
            elif ext == "label":
                c.voxel_labels(path)
            else:
                c.mask(path, allow_unpacked=layout.unpacked_invalid and ext == "invalid")
    # images: every voxel frame needs both; every SSC image index inside the voxel range needs voxels
    sizes: dict[str, set[tuple[int, int]]] = {}
    left_sizes: dict[str, tuple[int, int] | None] = {}
    for cam, folder in layout.image_dirs(seq).items():
        have = _frames(folder, "png")
        if not folder.is_dir():
            if cam == "right":
                r.add(folder, "missing", "no right-camera image folder (only needed for stereo depth)", warning=True)
                continue
            r.add(folder, "missing", "no left-camera image folder")
            continue
        for frame in frames:
            size = c.image(folder / f"{frame}.png")
            if size is not None:
                sizes.setdefault(cam, set()).add(size)
            if cam == "left":
                left_sizes[frame] = size
        if frames:
            lo, hi = int(frames[0]), int(frames[-1])
            for frame in sorted(have - set(frames)):
                if int(frame) % 5 == 0 and lo <= int(frame) <= hi:
                    r.add(folder / f"{frame}.png", "missing", f"image of SSC frame {frame} has no voxels/{frame}.bin")
    all_sizes = set().union(*sizes.values()) if sizes else set()
    if len(all_sizes) > 1:
        r.add(seq_dir, "mismatch", f"images of one sequence differ in size: {sorted(all_sizes)} (W, H)")
    if c.label_root is not None and labelled:
        for frame in frames:
            c.targets(layout.target_seq(seq), frame)
    if c.depth_root is not None:
        for frame in frames:
            c.depth(layout.depth_path(c.depth_root, seq, frame), left_sizes.get(frame))
    layout.check_extras(c, seq, frames)


def _check_calib(c: _Checker, path: Path) -> None:
    """calib.txt parses (P0..P3, Tr), P2 is a rectified projection K [I | t] and Tr's rotation is a rotation."""
    calib = c._guard(path, "calib", lambda: io.read_calib(path))
    if calib is None:
        return
    K, rot = calib["P2"][:, :3], calib["Tr"][:3, :3]
    if not (K[0, 0] > 0 and K[1, 1] > 0 and K[2, 2] == 1 and K[1, 0] == 0 and K[2, 0] == 0 and K[2, 1] == 0):
        c.r.add(path, "calib", f"P2 is not a rectified projection K [I | t] (K = {K.tolist()})")
    if abs(np.linalg.det(rot) - 1.0) > 1e-3 or np.abs(rot @ rot.T - np.eye(3)).max() > 1e-3:
        c.r.add(path, "calib", "Tr's rotation part is not a rotation matrix")


class _Layout(ABC):
    name = ""
    voxel_exts: tuple[str, ...] = ()
    unpacked_invalid = False

    def __init__(self, root: Path) -> None:
        self.root = root

    @abstractmethod
    def sequences(self) -> list[str]:
        """Subclass hook."""

    @abstractmethod
    def seq_dir(self, seq: str) -> Path:
        """Subclass hook."""

    def normalize(self, seq: str) -> str:
        return seq

    @abstractmethod
    def image_dirs(self, seq: str) -> dict[str, Path]:
        """Subclass hook."""

    @abstractmethod
    def depth_path(self, depth_root: Path, seq: str, frame: str) -> Path:
        """Subclass hook."""

    def target_seq(self, seq: str) -> str:
        return seq

    def check_extras(self, c: _Checker, seq: str, frames: list[str]) -> None:
        """Dataset-specific files (calibration, poses, scans)."""


class _SemanticKittiLayout(_Layout):
    name = "semantic_kitti"
    voxel_exts = ("bin", "label", "invalid", "occluded")

    def sequences(self) -> list[str]:
        base = self.root / "sequences"
        if not base.is_dir():
            raise SsckitError(f"{self.root}: no sequences/ folder (expected the SemanticKITTI root holding "
                              "sequences/XX/voxels)")
        return sorted(p.name for p in base.iterdir() if p.is_dir() and re.fullmatch(r"\d{2}", p.name))

    def seq_dir(self, seq: str) -> Path:
        return self.root / "sequences" / seq

    def normalize(self, seq: str) -> str:
        return f"{int(seq):02d}" if seq.isdigit() else seq

    def image_dirs(self, seq: str) -> dict[str, Path]:
        return {"left": self.seq_dir(seq) / "image_2", "right": self.seq_dir(seq) / "image_3"}

    def depth_path(self, depth_root: Path, seq: str, frame: str) -> Path:
        return depth_root / "sequences" / seq / f"{frame}.npy"

    def check_extras(self, c: _Checker, seq: str, frames: list[str]) -> None:
        r, d = c.r, self.seq_dir(seq)
        _check_calib(c, d / "calib.txt")
        n = {}
        for name, reader in (("poses.txt", io.read_poses), ("times.txt", io.read_times)):
            path = d / name
            if not path.exists():
                r.add(path, "missing", f"{name} not found (not needed by the readers)", warning=True)
                continue
            table = c._guard(path, "layout", lambda p=path, f=reader: f(p))
            if table is not None:
                n[name] = len(table)
                if frames and len(table) <= int(frames[-1]):
                    r.add(path, "layout", f"{len(table)} lines, but voxel frame {frames[-1]} needs at least "
                                          f"{int(frames[-1]) + 1}")
        if len(n) == 2 and n["poses.txt"] != n["times.txt"]:
            r.add(d / "times.txt", "mismatch", f"{n['times.txt']} timestamps for {n['poses.txt']} poses")
        velo, labels = d / "velodyne", d / "labels"
        if velo.is_dir():
            for frame in frames:
                c.scan(velo / f"{frame}.bin", labels / f"{frame}.label", labels.is_dir())


class _Kitti360Layout(_Layout):
    name = "kitti_360"
    voxel_exts = ("bin", "label", "invalid")
    unpacked_invalid = True

    def sequences(self) -> list[str]:
        base = self.root / "data_2d_raw"
        if not base.is_dir():
            raise SsckitError(f"{self.root}: no data_2d_raw/ folder (expected the SSCBench KITTI-360 root holding "
                              "data_2d_raw/2013_05_28_drive_00NN_sync/voxels)")
        return sorted(p.name for p in base.iterdir() if p.is_dir() and re.fullmatch(r"2013_05_28_drive_\d{4}_sync",
                                                                                      p.name))

    def seq_dir(self, seq: str) -> Path:
        return self.root / "data_2d_raw" / seq

    def normalize(self, seq: str) -> str:
        return f"2013_05_28_drive_{int(seq):04d}_sync" if seq.isdigit() else seq

    def image_dirs(self, seq: str) -> dict[str, Path]:
        return {"left": self.seq_dir(seq) / "image_00" / "data_rect",
                "right": self.seq_dir(seq) / "image_01" / "data_rect"}

    def depth_path(self, depth_root: Path, seq: str, frame: str) -> Path:
        return depth_root / seq / f"{frame}.npy"

    def check_extras(self, c: _Checker, seq: str, frames: list[str]) -> None:
        """A drive-level calib.txt (used by the reader instead of the fixed calibration) and the pose tables
        (index + 3x4 / 4x4 per line; keyed by raw KITTI-360 ids, not needed by the readers) when present."""
        d = self.seq_dir(seq)
        if (d / "calib.txt").exists():
            _check_calib(c, d / "calib.txt")
        for name, rows in (("pose.txt", 3), ("cam0_to_world.txt", 4)):
            path = d / name
            if path.exists():
                c._guard(path, "layout", lambda p=path, n=rows: io.read_indexed_poses(p, n))


_LAYOUTS = {"semantic_kitti": _SemanticKittiLayout, "kitti_360": _Kitti360Layout}


def check_dataset(root: str | os.PathLike, dataset: str = "semantic_kitti", label_root: str | os.PathLike | None = None,
                  depth_root: str | os.PathLike | None = None, sequences: Iterable[str] | None = None) -> CheckReport:
    """Check the dataset at ``root`` (all sequences present, or only ``sequences``); see the module docstring.

    KITTI-360 targets are checked under ``label_root``, by default ``<root>/preprocess/labels`` when it exists."""
    if dataset not in _LAYOUTS:
        raise SsckitError(f"unknown dataset {dataset!r}; choose one of {sorted(_LAYOUTS)}")
    root = Path(root)
    if not root.is_dir():
        raise SsckitError(f"{root}: dataset root not found")
    labels = get_label_table(dataset)
    layout = _LAYOUTS[dataset](root)
    report = CheckReport(str(root), dataset)
    present = layout.sequences()
    if sequences is not None:
        wanted = [layout.normalize(str(s).strip()) for s in sequences]
        for s in wanted:
            if s not in present:
                report.add(layout.seq_dir(s), "missing", "sequence folder not found")
        present = [s for s in present if s in wanted]
    elif not present:
        report.add(root, "missing", "no sequence folders found")
    if label_root is None and dataset == "kitti_360" and (root / "preprocess" / "labels").is_dir():
        label_root = root / "preprocess" / "labels"  # the reader's default target folder
    for opt, name in ((label_root, "--label-root"), (depth_root, "--depth-root")):
        if opt is not None and not Path(opt).is_dir():
            report.add(opt, "missing", f"{name} folder not found")
    checker = _Checker(report, labels, None if label_root is None else Path(label_root),
                       None if depth_root is None else Path(depth_root))
    report.sequences = present
    for seq in present:
        _check_sequence(checker, layout, seq)
    return report
