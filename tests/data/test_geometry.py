"""Geometry: voxel centres, MonoScene vox2pix, Symphonies pix2vox, frustum tile ids, LiDAR voxelisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssckit.data import geometry as g
from ssckit.data import io

# KITTI odometry seq 00 intrinsics (datasets.md §1.6) and a proper velo -> cam rigid transform close to KITTI's Tr.
K_KITTI = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])


def _kitti_like_tr(yaw: float = 0.01, t: tuple[float, float, float] = (-0.012, -0.054, -0.292)) -> np.ndarray:
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # velo (x fwd, y left, z up) -> cam
    c, s = np.cos(yaw), np.sin(yaw)
    tilt = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    T = np.eye(4)
    T[:3, :3] = tilt @ axes
    T[:3, 3] = t
    return T


# Hand-made camera A: cam = (-y, -z, x); fx = fy = 100, cx = 50, cy = 20; image 100 x 40.
T_A = np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
K_A = np.array([[100.0, 0, 50], [0, 100, 20], [0, 0, 1]])


def test_grid_shapes_and_centres():
    assert g.scaled_grid(1) == (256, 256, 32)
    assert g.scaled_grid(2) == (128, 128, 16)
    assert g.scaled_grid(8) == (32, 32, 4)
    assert g.scaled_voxel_size(8) == pytest.approx(1.6)
    with pytest.raises(ValueError):
        g.scaled_grid(3)
    c = g.voxel_centres((256, 256, 32), 0.2)
    assert c.shape == (2_097_152, 3)
    np.testing.assert_allclose(c[0], [0.1, -25.5, -1.9])
    np.testing.assert_allclose(c[-1], [51.1, 25.5, 4.3])
    # flat order of the C-order label grid: flat = x*8192 + y*32 + z
    np.testing.assert_allclose(c[5 * 8192 + 7 * 32 + 3], [1.1, -25.6 + 1.5, -2.0 + 0.7])
    ct = g.voxel_centres_torch((32, 32, 4), 1.6)
    np.testing.assert_allclose(ct.numpy(), g.voxel_centres((32, 32, 4), 1.6))
    np.testing.assert_allclose(ct[1].numpy(), [0.8, -24.8, 0.4])  # voxel (0, 0, 1)


def test_vox2pix_hand_computed():
    # grid 4x4x2, 1 m voxels, origin (0, -2, -1): centre (i+.5, j-1.5, k-.5) -> cam (1.5-j, .5-k, i+.5)
    pix, fov, z = g.vox2pix(T_A, K_A, (100, 40), (4, 4, 2), 1.0, (0.0, -2.0, -1.0))
    assert pix.dtype == np.int64 and pix.shape == (32, 2) and fov.shape == (32,)
    flat = lambda i, j, k: (i * 4 + j) * 2 + k  # noqa: E731
    # (3,1,0): X=.5 Y=.5 Z=3.5 -> u = 50/3.5+50 = 64.29 -> 64, v = 50/3.5+20 = 34.29 -> 34
    assert pix[flat(3, 1, 0)].tolist() == [64, 34] and fov[flat(3, 1, 0)] and z[flat(3, 1, 0)] == pytest.approx(3.5)
    # (3,1,1): Y=-.5 -> v = -14.29+20 = 5.71 -> 6
    assert pix[flat(3, 1, 1)].tolist() == [64, 6] and fov[flat(3, 1, 1)]
    # (2,1,0): u = 70, v = 40 = H -> outside (v < H is strict)
    assert pix[flat(2, 1, 0)].tolist() == [70, 40] and not fov[flat(2, 1, 0)]
    # (2,1,1): v = 0 -> inside (0 <= v)
    assert pix[flat(2, 1, 1)].tolist() == [70, 0] and fov[flat(2, 1, 1)]
    # (1,2,1): u = -33.3+50 = 16.7 -> 17, v = -33.3+20 = -13.3 -> -13 (outside)
    assert pix[flat(1, 2, 1)].tolist() == [17, -13] and not fov[flat(1, 2, 1)]
    # (0,0,0): u = 350 -> outside
    assert pix[flat(0, 0, 0)].tolist() == [350, 120] and not fov[flat(0, 0, 0)]


def test_vox2pix_behind_camera_is_outside_fov():
    T = T_A.copy()
    T[2, 3] = -1.0  # Z = i - 0.5
    K = np.array([[100.0, 0, 150], [0, 100, 20], [0, 0, 1]])
    pix, fov, z = g.vox2pix(T, K, (300, 200), (4, 4, 2), 1.0, (0.0, -2.0, -1.0))
    # (0,1,1): X=.5, Y=-.5, Z=-.5 -> u = -100+150 = 50, v = 100+20 = 120: inside the image but behind the camera
    i = (0 * 4 + 1) * 2 + 1
    assert pix[i].tolist() == [50, 120] and z[i] == pytest.approx(-0.5) and not fov[i]


def test_vox2pix_torch_batched_matches_numpy():
    T2 = _kitti_like_tr(yaw=-0.03, t=(0.1, -0.2, 0.3))
    Ts = np.stack([_kitti_like_tr(), T2])
    Ks = np.stack([K_KITTI, K_KITTI * np.array([[0.5], [0.5], [1.0]])])
    pix_t, fov_t, z_t = g.vox2pix_torch(torch.from_numpy(Ts), torch.from_numpy(Ks), (1220, 370), (128, 128, 16), 0.4)
    assert pix_t.shape == (2, 262_144, 2) and pix_t.dtype == torch.int64 and fov_t.shape == (2, 262_144)
    for b in range(2):
        pix, fov, z = g.vox2pix(Ts[b], Ks[b], (1220, 370), (128, 128, 16), 0.4)
        assert torch.equal(pix_t[b], torch.from_numpy(pix))
        assert torch.equal(fov_t[b], torch.from_numpy(fov))
        np.testing.assert_allclose(z_t[b].numpy(), z)
    assert 0 < int(fov_t[0].sum()) < 262_144


def test_roundtrip_voxel_to_pixel_to_voxel():
    grid, size = (256, 256, 32), 0.2
    T = _kitti_like_tr()
    pix, fov, z = g.vox2pix(T, K_KITTI, (1220, 370), grid, size)
    assert fov.sum() > 100_000
    pts = g.unproject_pixels(pix[fov], z[fov], K_KITTI, T)
    idx = g.points_to_grid_coords(pts, size, offset=0.0, rounding="floor")
    np.testing.assert_array_equal(idx, g.voxel_indices(grid)[fov])
    # Symphonies convention (offset 0.5): the continuous index of a centre is an integer -> "round" recovers it
    idx_sym = g.points_to_grid_coords(pts, size, offset=0.5, rounding="round")
    np.testing.assert_array_equal(idx_sym, g.voxel_indices(grid)[fov])
    # torch twin, batched
    pts_t = g.unproject_pixels_torch(torch.from_numpy(pix[fov]), torch.from_numpy(z[fov])[None],
                                     torch.from_numpy(K_KITTI), torch.from_numpy(T))
    np.testing.assert_allclose(pts_t[0].numpy(), pts, atol=1e-9)


def test_pix2vox_hand_computed_trunc_vs_floor():
    # identity camera: p = [u d, v d, d]; origin 0, 1 m voxels, offset 0.5
    depth = np.full((2, 3), 2.0)
    depth[0, 0] = 0.25
    I4, I3 = np.eye(4), np.eye(3)
    f = g.pix2vox(depth, I3, I4, 1.0, (0.0, 0.0, 0.0), rounding=None)
    np.testing.assert_allclose(f[5], [3.5, 1.5, 1.5])  # pixel (u=2, v=1), row-major index 1*3+2
    np.testing.assert_allclose(f[0], [-0.5, -0.5, -0.25])
    trunc = g.pix2vox(depth, I3, I4, 1.0, (0.0, 0.0, 0.0), downsample_z=2)
    floor = g.pix2vox(depth, I3, I4, 1.0, (0.0, 0.0, 0.0), downsample_z=2, rounding="floor")
    assert trunc[5].tolist() == [3, 1, 0]  # z = 1.5 / 2 = 0.75
    assert trunc[0].tolist() == [0, 0, 0] and floor[0].tolist() == [-1, -1, -1]
    assert g.inside_grid(trunc, (4, 2, 1)).tolist() == [True] * 6
    assert not g.inside_grid(floor, (4, 2, 1))[0]
    tt = g.pix2vox_torch(torch.from_numpy(depth)[None], torch.eye(3, dtype=torch.float64), torch.eye(4),
                         1.0, (0.0, 0.0, 0.0), downsample_z=2)
    assert tt.shape == (1, 6, 3) and tt.dtype == torch.int64
    np.testing.assert_array_equal(tt[0].numpy(), trunc)


def test_pix2vox_torch_matches_numpy_batched():
    rng = np.random.default_rng(0)
    depth = rng.uniform(2, 60, size=(2, 37, 122))
    T = _kitti_like_tr()
    K = K_KITTI / np.array([[10.0], [10.0], [1.0]])
    out = g.pix2vox_torch(torch.from_numpy(depth), torch.from_numpy(K), torch.from_numpy(T), 0.4,
                          rounding=None, downsample_z=2)
    for b in range(2):
        ref = g.pix2vox(depth[b], K, T, 0.4, downsample_z=2, rounding=None)
        np.testing.assert_allclose(out[b].numpy(), ref, atol=1e-9)


def test_symphonies_oracle_vox2pix_and_pix2vox(oracle_dir):
    path = oracle_dir / "symphonies" / "symphonies_tiny_oracle.pt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = torch.load(path, weights_only=True)
    inp, mid = data["inputs"], data["intermediates"]
    T, K, origin = inp["cam_pose"], inp["cam_K"], inp["voxel_origin"]
    # vox2pix on the 12x10x16 pre-z-downsample grid, 4 m voxels, image 244 x 74
    pix, fov, _ = g.vox2pix(T[0].double().numpy(), K[0].double().numpy(), (244, 74), (12, 10, 16), 4.0,
                            origin[0].tolist())
    np.testing.assert_array_equal(pix, inp["projected_pix_2"][0].numpy())
    np.testing.assert_array_equal(fov, inp["fov_mask_2"][0].numpy())
    pix_t, fov_t, _ = g.vox2pix_torch(T, K, (244, 74), (12, 10, 16), 4.0, origin[0].tolist())
    assert torch.equal(pix_t, inp["projected_pix_2"]) and torch.equal(fov_t, inp["fov_mask_2"])
    # pix2vox in float32 (Symphonies' order of operations) reproduces the stored float voxel coordinates
    vol = g.pix2vox_torch(inp["depth"], K, T, 4.0, origin, downsample_z=2, rounding=None)
    torch.testing.assert_close(vol, mid["vol_pts_float"], rtol=0, atol=1e-5)
    vol_np = g.pix2vox(inp["depth"][0].numpy(), K[0].numpy(), T[0].numpy(), 4.0, origin[0].tolist(),
                       downsample_z=2, rounding=None)
    np.testing.assert_allclose(vol_np, mid["vol_pts_float"][0].numpy(), atol=1e-4)
    # proposal set: voxels of the 12x10x8 decode grid hit by >= 1 truncated in-grid pixel
    idx = g.pix2vox_torch(inp["depth"], K, T, 4.0, origin, downsample_z=2)[0]
    inside = g.inside_grid(idx, (12, 10, 8))
    assert int(inside.sum()) == 14_183
    hit = torch.zeros(12 * 10 * 8, dtype=torch.bool)
    hit[(idx[inside, 0] * 10 + idx[inside, 1]) * 8 + idx[inside, 2]] = True
    assert torch.equal(hit, mid["proposal_mask"])


def _brute_force_frustum_masks(pix, z, target, W, H, size):
    """MonoScene's compute_local_frustums loop: tiles y-major, float bounds, Z > 0 and target != 255."""
    masks = []
    for ty in range(size):
        for tx in range(size):
            x0, x1 = tx / size * W, (tx + 1) / size * W
            y0, y1 = ty / size * H, (ty + 1) / size * H
            m = (pix[:, 0] >= x0) & (pix[:, 0] < x1) & (pix[:, 1] >= y0) & (pix[:, 1] < y1) & (z > 0)
            masks.append(m & (target.reshape(-1) != 255))
    return np.stack(masks)


@pytest.mark.parametrize("size", [8, 3])
def test_frustum_tile_ids_match_brute_force(size):
    grid = (32, 32, 4)
    pix, _, z = g.vox2pix(_kitti_like_tr(), K_KITTI, (1220, 370), grid, 1.6)
    rng = np.random.default_rng(size)
    target = rng.choice([0, 1, 9, 255], size=grid, p=[0.5, 0.2, 0.2, 0.1]).astype(np.uint8)
    ids, n = g.frustum_tile_ids(pix, z, (1220, 370), size, target)
    assert n == size * size and ids.dtype == np.int64
    masks = _brute_force_frustum_masks(pix, z, target, 1220, 370, size)
    for t in range(n):
        np.testing.assert_array_equal(ids == t, masks[t])
    assert ((ids == -1) == ~masks.any(0)).all()
    assert len(np.unique(ids[ids >= 0])) > n // 2  # the frustum actually spans many tiles
    counts = g.frustum_class_counts(ids, target, n, 20)
    for t in range(n):
        ref = np.bincount(target.reshape(-1)[masks[t]], minlength=256)[:20]
        np.testing.assert_array_equal(counts[t], ref)
    # torch twin, batched (same sample twice, second with the ignore mask lifted)
    pix_t = torch.from_numpy(np.stack([pix, pix]))
    z_t = torch.from_numpy(np.stack([z, z]))
    tgt_t = torch.from_numpy(np.stack([target, np.zeros_like(target)]))
    ids_t, n_t = g.frustum_tile_ids_torch(pix_t, z_t, (1220, 370), size, tgt_t)
    assert n_t == n and torch.equal(ids_t[0], torch.from_numpy(ids))
    ids_free, _ = g.frustum_tile_ids(pix, z, (1220, 370), size)
    assert torch.equal(ids_t[1], torch.from_numpy(ids_free))
    counts_t = g.frustum_class_counts_torch(ids_t, tgt_t, n, 20)
    assert torch.equal(counts_t[0], torch.from_numpy(counts))


def test_points_to_occupancy_hand_points():
    pts = np.array([
        [0.05, -25.55, -1.95],  # voxel (0, 0, 0)
        [51.19, 25.59, 4.39],  # voxel (255, 255, 31)
        [10.0, 0.01, 0.0],  # voxel (50, 128, 10)
        [51.2, 0.0, 0.0],  # x at the upper edge -> outside
        [-0.01, 0.0, 0.0],  # x below 0 -> outside
        [10.0, 0.0, 4.4],  # z at the top edge -> outside
    ])
    idx, inside = g.points_to_voxel_indices(pts, (256, 256, 32), 0.2)
    assert inside.tolist() == [True, True, True, False, False, False]
    assert idx[2].tolist() == [50, 128, 10]
    occ = g.points_to_occupancy(pts, (256, 256, 32), 0.2)
    assert occ.sum() == 3 and occ[0, 0, 0] and occ[255, 255, 31] and occ[50, 128, 10]


def test_voxelised_real_scan_matches_v10_bin(real_root):
    seq = real_root / "sequences" / "08"
    scan = io.read_scan(seq / "velodyne" / "001000.bin")
    occ_bin = io.read_voxel_mask(seq / "voxels" / "001000.bin")
    occ = g.points_to_occupancy(scan, (256, 256, 32), 0.2, (0.0, -25.6, -2.2))  # v1.0 grid: origin one voxel lower
    iou = (occ & occ_bin).sum() / (occ | occ_bin).sum()
    assert iou > 0.98  # datasets.md §6: 0.985
    calib = io.read_calib(seq / "calib.txt")
    _, fov, _ = g.project_points(scan[:, :3], calib["Tr"], calib["P2"][:, :3], (1226, 370))
    assert 15_000 < fov.sum() < 30_000  # §6: 21,043 points project inside 1226x370 with the full P2
