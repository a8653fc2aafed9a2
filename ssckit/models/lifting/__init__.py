"""2D -> 3D lifting stages."""
from ssckit.models.lifting.flosp import FLoSP, flosp
from ssckit.models.lifting.voxel_proposal import (
    VoxelProposalLayer,
    downsample_flat_z,
    pix2vox,
    pixel_grid,
    voxel_hit_mask,
)

__all__ = ["FLoSP", "flosp", "VoxelProposalLayer", "downsample_flat_z", "pix2vox", "pixel_grid", "voxel_hit_mask"]
