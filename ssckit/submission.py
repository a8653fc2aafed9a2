"""SemanticKITTI SSC test-server submissions: write ``.label`` predictions, zip them, validate the zip.

Layout (datasets.md §2.3): ``sequences/XX/predictions/NNNNNN.label``, flat uint16 RAW ids (learning ids mapped
through ``learning_map_inv``), 2 x 2,097,152 bytes each, one per test ``voxels/NNNNNN.bin`` of sequences 11-21, and
a zip with explicit directory entries plus an optional root ``description.txt``. The validator repeats the checks of
semantic-kitti-api's ``validate_submission.py --task completion`` and also checks every id is a valid raw label.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np

from ssckit.data.io import NUM_VOXELS, atomic_write_bytes
from ssckit.data.labels import LabelTable
from ssckit.errors import SsckitError

TEST_SEQUENCES: tuple[str, ...] = tuple(f"{s:02d}" for s in range(11, 22))
LABEL_BYTES = 2 * NUM_VOXELS  # uint16 per voxel, not packed
DESCRIPTION = "description.txt"
_PRED_RE = re.compile(r"^sequences/(\d{2})/predictions/(\d{6})\.label$")
_MAX_LISTED = 10  # ids / names quoted per problem line


def prediction_path(pred_root: str | os.PathLike, sequence: str, frame: str) -> Path:
    """``<pred_root>/sequences/<sequence>/predictions/<frame>.label``."""
    return Path(pred_root) / "sequences" / sequence / "predictions" / f"{frame}.label"


def write_prediction_label(pred_root: str | os.PathLike, frame_id: tuple[str, str], learning_pred: np.ndarray,
                           labels: LabelTable) -> Path:
    """Write one prediction of learning ids (X, Y, Z) as a flat uint16 raw-id ``.label`` file; returns its path."""
    pred = np.asarray(learning_pred)
    if pred.size != NUM_VOXELS:
        raise ValueError(f"prediction has {pred.size:,} voxels (shape {pred.shape}), expected {NUM_VOXELS:,}")
    if pred.dtype.kind not in "iu":
        raise ValueError(f"prediction must hold integer learning ids, got dtype {pred.dtype}")
    raw = labels.to_raw(pred).astype("<u2").reshape(-1)  # (X*Y*Z,) C-order = [x][y][z]
    path = prediction_path(pred_root, frame_id[0], frame_id[1])
    atomic_write_bytes(path, raw.tobytes())
    return path


def _dir_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o40755 << 16) | 0x10  # unix directory mode + MS-DOS directory flag
    return info


def zip_submission(pred_root: str | os.PathLike, zip_path: str | os.PathLike, description: str | None = None) -> Path:
    """Zip ``<pred_root>/sequences/*/predictions/*.label`` with explicit directory entries (+ ``description.txt``)."""
    pred_root, zip_path = Path(pred_root), Path(zip_path)
    if zip_path.suffix != ".zip":
        raise SsckitError(f"{zip_path}: the submission file name must end with .zip")
    files = sorted((pred_root / "sequences").glob("*/predictions/*.label"))
    if not files:
        raise SsckitError(f"no predictions found under {pred_root}/sequences/*/predictions/")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".tmp-{zip_path.name}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(_dir_info("sequences/"), b"")
            for seq in sorted({f.parts[-3] for f in files}):
                zf.writestr(_dir_info(f"sequences/{seq}/"), b"")
                zf.writestr(_dir_info(f"sequences/{seq}/predictions/"), b"")
            for f in files:
                zf.write(f, f"sequences/{f.parts[-3]}/predictions/{f.name}")
            if description is not None:
                zf.writestr(DESCRIPTION, description)
        os.replace(tmp, zip_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return zip_path


def expected_test_frames(data_root: str | os.PathLike) -> dict[str, list[str]]:
    """Test frames per test sequence present under ``<data_root>/sequences/XX/voxels/*.bin`` (sorted)."""
    out: dict[str, list[str]] = {}
    for seq in TEST_SEQUENCES:
        vdir = Path(data_root) / "sequences" / seq / "voxels"
        if vdir.is_dir():
            out[seq] = sorted(p.stem for p in vdir.glob("*.bin"))
    return out


def _listed(items: list, total: int | None = None) -> str:
    total = len(items) if total is None else total
    more = f", ... ({total} in all)" if total > _MAX_LISTED else ""
    return ", ".join(str(x) for x in items[:_MAX_LISTED]) + more


def validate_submission(zip_path: str | os.PathLike, data_root: str | os.PathLike, labels: LabelTable,
                        check_ids: bool = True, progress: bool = False, partial: bool = False) -> list[str]:
    """Every problem of a submission zip (empty list = valid).

    As the official validator: directory entries and one prediction per ``voxels/*.bin`` of EVERY test sequence
    11-21; a test sequence without a ``voxels/`` folder under ``data_root`` is itself a problem (completeness cannot
    be verified). With ``partial`` only the test sequences present under ``data_root`` need directory entries and
    predictions. Predictions of test sequences absent from ``data_root`` are checked for size and ids only.
    """
    zip_path = Path(zip_path)
    problems: list[str] = []
    if zip_path.suffix != ".zip":
        problems.append(f"{zip_path.name}: the submission file name must end with .zip")
    frames = expected_test_frames(data_root)
    if not frames:
        return problems + [f"no test sequence (11-21) with a voxels/ folder under {data_root}/sequences"]
    absent = [s for s in TEST_SEQUENCES if s not in frames]
    if absent and not partial:
        problems.append(f"test sequence{'s' if len(absent) > 1 else ''} {', '.join(absent)} ha"
                        f"{'ve' if len(absent) > 1 else 's'} no voxels/ folder under {data_root}/sequences: "
                        "cannot verify that the submission is complete (use --partial to check only the "
                        "sequences present)")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as e:
        return problems + [f"{zip_path}: not a readable zip file ({e})"]
    with zf:
        infos = zf.infolist()
        dirs = {i.filename for i in infos if i.filename.endswith("/")}
        files = {i.filename: i for i in infos if not i.filename.endswith("/")}
        files.pop(DESCRIPTION, None)

        pred_seqs = {m.group(1) for m in map(_PRED_RE.match, files) if m and m.group(1) in TEST_SEQUENCES}
        dir_seqs = sorted(set(frames) | pred_seqs) if partial else TEST_SEQUENCES
        needed_dirs = ["sequences/"] + [d for s in dir_seqs
                                        for d in (f"sequences/{s}/", f"sequences/{s}/predictions/")]
        problems += [f'directory entry "{d}" missing inside the zip' for d in needed_dirs if d not in dirs]

        necessary = {f"sequences/{s}/predictions/{f}.label" for s, fr in frames.items() for f in fr}
        missing = sorted(necessary - files.keys())
        problems += [f'"{name}" is missing inside the zip' for name in missing]

        stray = sorted(n for n in files if n not in necessary
                       and not ((m := _PRED_RE.match(n)) and m.group(1) in pred_seqs - set(frames)))
        problems += [f'unneeded file "{name}" inside the zip (only predictions and a root {DESCRIPTION} allowed)'
                     for name in stray]

        to_check = sorted(set(files) - set(stray))
        valid = np.zeros(1 << 16, dtype=bool)
        valid[labels.valid_raw_ids] = True
        it = to_check
        if progress:
            from tqdm import tqdm

            it = tqdm(to_check, desc="validate", unit="file", disable=None)
        for name in it:
            size = files[name].file_size
            if size != LABEL_BYTES:
                problems.append(f'"{name}" should have {NUM_VOXELS:,} labels ({LABEL_BYTES:,} bytes), '
                                f"but has {size / 2:,.1f} labels ({size:,} bytes)")
                continue
            if check_ids:
                try:
                    data = zf.read(name)
                except (zipfile.BadZipFile, OSError) as e:
                    problems.append(f'"{name}" cannot be read from the zip ({e})')
                    continue
                problems += _check_ids(name, data, valid, labels)
    return problems


def _check_ids(name: str, data: bytes, valid: np.ndarray, labels: LabelTable) -> list[str]:
    ids = np.frombuffer(data, dtype="<u2")
    bad = ~valid[ids]
    if not bad.any():
        return []
    bad_ids = np.unique(ids[bad])
    hint = " (learning ids written without learning_map_inv?)" if bad_ids.max() < labels.num_classes else ""
    return [f'"{name}" holds {int(bad.sum()):,} voxel(s) with ids that are not valid raw {labels.name} labels: '
            f"{_listed(bad_ids.tolist())}{hint}"]

