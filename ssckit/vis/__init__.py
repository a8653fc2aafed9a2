"""Headless figures of SSC results: voxel scenes as shaded cubes (numpy z-buffer) laid out with matplotlib Agg."""
from __future__ import annotations

from ssckit.vis.figure import (ERROR_FALSE_NEGATIVE, ERROR_FALSE_POSITIVE, ERROR_WRONG_CLASS, classes_present,
                               error_codes, error_palette, frame_figure, make_figure, render_frame, render_panels)
from ssckit.vis.voxels import Camera, VoxelRender, exposed_faces, look_at, orbit_camera, render_voxels

__all__ = ["Camera", "ERROR_FALSE_NEGATIVE", "ERROR_FALSE_POSITIVE", "ERROR_WRONG_CLASS", "VoxelRender",
           "classes_present", "error_codes", "error_palette", "exposed_faces", "frame_figure", "look_at",
           "make_figure", "orbit_camera", "render_frame", "render_panels", "render_voxels"]
