"""The phantom's output grid and the pose of the head on it."""
from __future__ import annotations

import numpy as np
import torch

from ..geometry import Grid

COARSE_MM = 4.0
"""Node spacing (mm, about) of the coarse grid on which the smooth fields are evaluated."""


class PosedGrid:
    """The output grid (a :class:`~XRayToCTLib.geometry.Grid` in the scanner frame, axis
    aligned) and the pose of the head on it: a canonical (head-frame) point ``p`` lies at the
    scanner point ``rot @ p + trans``.

    The index -> millimetre mapping is the grid's :meth:`~XRayToCTLib.geometry.Grid.index_to_lps`
    matrix; as the grid is axis aligned, it is applied one axis at a time (``origin[a] +
    index * step[a]``), which lets coordinates be computed on broadcast 1-D index vectors.
    """

    def __init__(self, grid: Grid, rot: np.ndarray, trans: np.ndarray):
        m = grid.index_to_lps()
        scale = m[:3, :3]
        if np.count_nonzero(scale - np.diag(np.diagonal(scale))):
            raise ValueError("the phantom grid must be axis aligned (a diagonal index-to-LPS matrix)")
        self.grid = grid
        self.n = np.asarray(grid.size, dtype=int)
        self.step = np.diagonal(scale).copy()  # mm per index step along i, j, k
        self.origin = m[:3, 3].copy()          # LPS of voxel (0, 0, 0)
        self.rot, self.trans = rot, trans
        # coarse factor per axis: coarse node m sits on fine index m * f
        self.f = np.maximum(1, np.round(COARSE_MM / self.step)).astype(int)
        self.m = (self.n - 2) // self.f + 2  # nodes, the last at or beyond the grid's end

    def scanner(self, axis: int, index):
        """Scanner-frame coordinate (mm) along ``axis`` of (broadcastable numpy/torch) indices."""
        return self.origin[axis] + index * self.step[axis]

    def to_scanner(self, p) -> np.ndarray:
        """Scanner-frame position of a canonical point."""
        return self.rot @ p + self.trans

    def canonical(self, ii, jj, kk):
        """Canonical (head-frame) coordinates of fine indices (broadcastable numpy/torch)."""
        r = self.rot.T  # p = R^T (X - t)
        xs = self.scanner(0, ii) - self.trans[0]
        ys = self.scanner(1, jj) - self.trans[1]
        zs = self.scanner(2, kk) - self.trans[2]
        return tuple(r[a, 0] * xs + r[a, 1] * ys + r[a, 2] * zs for a in range(3))

    def box(self, lo, hi):
        """Index slices (k, j, i) of the scanner-frame bounding box of a canonical box, and
        the canonical coordinates (x, y, z) of its voxels as torch tensors; None if empty."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        idx = self.grid.continuous_index(corners @ self.rot.T + self.trans)
        i0 = np.maximum(np.floor(idx.min(0)).astype(int), 0)
        i1 = np.minimum(np.ceil(idx.max(0)).astype(int) + 1, self.n)
        if np.any(i1 <= i0):
            return None
        ii = torch.arange(i0[0], i1[0], dtype=torch.float32).view(1, 1, -1)
        jj = torch.arange(i0[1], i1[1], dtype=torch.float32).view(1, -1, 1)
        kk = torch.arange(i0[2], i1[2], dtype=torch.float32).view(-1, 1, 1)
        x, y, z = self.canonical(ii, jj, kk)
        sl = (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))
        return sl, x, y, z
