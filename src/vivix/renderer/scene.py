"""Procedural scenes: a stack of layers painted back to front at time `t`.

A frame is painted in horizontal bands of at most `BAND_PIXELS` pixels, channels first
(3, rows, width) in float32 sRGB, so a 4K still needs ~25 MB of scratch and a 1080p video
frame is a single band. Layers only touch the rows they cover. Smooth fields (clouds, mist,
rays, aurora, spirals) are computed on a coarse grid and upsampled by Pillow in C.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vivix.renderer.palette import RGB, Palette, mix

F32 = NDArray[np.float32]
BAND_PIXELS = 1 << 21
LATTICE = 256  # points of each periodic 1-D noise lattice
BICUBIC = Image.Resampling.BICUBIC


@dataclass(slots=True)
class Band:
    rgb: F32  # (3, rows, width)
    y0: int
    y1: int
    ys: F32  # pixel-centre rows, absolute
    xs: F32  # pixel-centre columns

    def rows(self, top: float, bottom: float) -> tuple[int, int] | None:
        """Band-relative [a, b) of the absolute rows [top, bottom), or None if disjoint."""
        a = max(self.y0, math.floor(top))
        b = min(self.y1, math.ceil(bottom))
        return (a - self.y0, b - self.y0) if a < b else None


class Layer(Protocol):
    def draw(self, band: Band, t: float) -> None: ...


def blend(dst: F32, colour: RGB | F32, alpha: F32) -> None:
    """dst += (colour - dst) * alpha, per channel; colour is a triple or broadcasts per channel."""
    for c in range(3):
        plane = dst[c]
        diff = np.subtract(colour[c], plane, dtype=np.float32)
        diff *= alpha
        plane += diff


def add_light(dst: F32, colour: RGB, amount: F32) -> None:
    for c in range(3):
        dst[c] += amount * np.float32(colour[c])


def apply_sparse(
    dst: F32, colour: RGB, touched: NDArray[np.intp], amount: F32 | float, *, additive: bool
) -> None:
    """Like blend/add_light, but only at the flat indices `touched` of each (rows, width)
    plane, with `amount` per index (or one for all): cheap for thin things spread over a
    whole frame (rain, dots, windows). Duplicate indices are harmless as long as their
    amounts agree: each reads the same pixel and writes the same value."""
    if not touched.size:
        return
    for c in range(3):
        plane = dst[c].reshape(-1)
        values = plane[touched]
        if additive:
            plane[touched] = values + np.float32(colour[c]) * amount
        else:
            plane[touched] = values + (np.float32(colour[c]) - values) * amount


def smoothstep(edge0: float, edge1: float, x: F32) -> F32:
    s: F32 = np.clip((x - np.float32(edge0)) * np.float32(1.0 / (edge1 - edge0)), 0.0, 1.0)
    return s * s * (np.float32(3.0) - np.float32(2.0) * s)


def row_colours(stops_y: Sequence[float], stops: Sequence[RGB], ys: F32) -> F32:
    """Vertical gradient through `stops` at rows `stops_y`: (3, len(ys))."""
    return np.stack(
        [np.interp(ys, stops_y, [s[c] for s in stops]).astype(np.float32) for c in range(3)]
    )


def fbm_1d(lattices: F32, u: F32, *, ridged: bool = False) -> F32:
    """Periodic value-noise fBm in 0..1; lattices is (octaves, LATTICE)."""
    total = np.zeros_like(u)
    weight_sum = 0.0
    for octave, lattice in enumerate(lattices):
        p = u * np.float32(2.03**octave) + np.float32(17.3 * octave)
        i = np.floor(p)
        f = p - i
        f = f * f * (3.0 - 2.0 * f)
        idx = i.astype(np.intp) % LATTICE
        a = lattice[idx]
        n = a + (lattice[(idx + 1) % LATTICE] - a) * f
        if ridged:
            n = 1.0 - np.abs(2.0 * n - 1.0)
        w = 0.5**octave
        total += np.float32(w) * n
        weight_sum += w
    return (total / np.float32(weight_sum)).astype(np.float32, copy=False)


class CoarseTexture:
    """A float field on a grid of `cell`-pixel cells, sampled at full resolution."""

    def __init__(self, values: F32, cell: float) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.image = Image.fromarray(self.values)
        self.cell = cell

    def row_centres(self) -> F32:
        return (np.arange(self.values.shape[0], dtype=np.float32) + 0.5) * np.float32(self.cell)

    def sample(self, band: Band, a: int, b: int, x_offset: float = 0.0) -> F32:
        width = band.xs.shape[0]
        c = self.cell
        box = (x_offset / c, (band.y0 + a) / c, (x_offset + width) / c, (band.y0 + b) / c)
        return np.asarray(self.image.resize((width, b - a), BICUBIC, box=box), dtype=np.float32)


def fbm_texture(
    rng: np.random.Generator,
    width: float,
    height: float,
    cell: float,
    period: tuple[float, float],
    octaves: int = 4,
) -> CoarseTexture:
    """Value-noise fBm in 0..1 covering width × height pixels; period is (x, y) in pixels."""
    gw, gh = math.ceil(width / cell) + 4, math.ceil(height / cell) + 4
    total = np.zeros((gh, gw), np.float32)
    for octave in range(octaves):
        scale = 2.0**octave
        lw = max(2, math.ceil(width / (period[0] / scale)) + 2)
        lh = max(2, math.ceil(height / (period[1] / scale)) + 2)
        lattice = Image.fromarray(rng.random((lh, lw), dtype=np.float32))
        total += np.asarray(lattice.resize((gw, gh), BICUBIC), np.float32) * np.float32(0.5**octave)
    lo, hi = np.percentile(total, [2.0, 98.0])
    return CoarseTexture(np.clip((total - lo) / max(hi - lo, 1e-6), 0.0, 1.0), cell)


FieldFunction = Callable[[F32, F32, float], F32]  # (x (1, w), y (h, 1), t) -> (h, w)


class CoarseField:
    """A field recomputed each frame on a coarse grid (cheap), upsampled per band."""

    def __init__(self, width: int, height: int, cell: float, compute: FieldFunction) -> None:
        gw, gh = math.ceil(width / cell) + 2, math.ceil(height / cell) + 2
        self.gx = (np.arange(gw, dtype=np.float32) + np.float32(0.5)) * np.float32(cell)
        self.gy = (np.arange(gh, dtype=np.float32) + np.float32(0.5)) * np.float32(cell)
        self.cell = cell
        self.compute = compute
        self._cached: tuple[float, CoarseTexture] | None = None

    def sample(self, band: Band, a: int, b: int, t: float) -> F32:
        if self._cached is None or self._cached[0] != t:
            values = self.compute(self.gx[None, :], self.gy[:, None], t)
            self._cached = (t, CoarseTexture(values, self.cell))
        return self._cached[1].sample(band, a, b)


def splat(
    dst: F32,
    y0: int,
    x: F32,
    y: F32,
    sigma: F32,
    weight: F32,
) -> NDArray[np.intp]:
    """Adds Gaussian dots into `dst`, a (rows, width) plane whose first row is `y0`; returns
    the flat indices it touched."""
    rows, width = dst.shape
    near = (y > y0 - 4 * sigma) & (y < y0 + rows + 4 * sigma)
    if not near.any():
        return np.empty(0, np.intp)
    x, y, sigma, weight = x[near], y[near], sigma[near], weight[near]
    k = max(1, math.ceil(2.5 * float(sigma.max())))
    offsets = np.arange(-k, k + 1)
    px = np.floor(x).astype(np.intp)[:, None, None] + offsets[None, None, :]
    py = np.floor(y).astype(np.intp)[:, None, None] + offsets[None, :, None]
    dx = (px + 0.5 - x[:, None, None]).astype(np.float32)
    dy = (py + 0.5 - y[:, None, None]).astype(np.float32)
    s2 = (2.0 * sigma * sigma)[:, None, None]
    w = weight[:, None, None] * np.exp(-(dx * dx + dy * dy) / s2)
    ry = py - y0
    keep = (ry >= 0) & (ry < rows) & (px >= 0) & (px < width) & (w > 1e-3)
    flat: NDArray[np.intp] = (
        np.broadcast_to(ry, keep.shape) * width + np.broadcast_to(px, keep.shape)
    )[keep]
    np.add.at(dst.reshape(-1), flat, w[keep].astype(np.float32))
    return flat


@dataclass(frozen=True, slots=True)
class SunPath:
    x: float
    y: float
    vx: float
    vy: float
    radius: float

    def at(self, t: float) -> tuple[float, float]:
        return self.x + self.vx * t, self.y + self.vy * t


class SkyLayer:
    def __init__(
        self,
        palette: Palette,
        horizon: float,
        height: int,
        sun: SunPath,
        glow: float,
        *,
        fill_bottom: float,
    ) -> None:
        stops_y = [0.0, horizon * 0.55, horizon, float(height)]
        sky = palette.sky
        self.rows_rgb = row_colours(
            stops_y, [sky[0], sky[1], sky[2], sky[2]], np.arange(height, dtype=np.float32) + 0.5
        )
        self.sun = sun
        self.glow_colour = palette.glow
        self.glow = glow
        self.glow_sigma = max(sun.radius * 5.0, height * 0.12)
        # Rows below this are always covered by the ground layers: no need to paint them.
        self.fill_bottom = fill_bottom

    def colour_at(self, y: F32) -> F32:
        idx = np.clip(y.astype(np.intp), 0, self.rows_rgb.shape[1] - 1)
        return self.rows_rgb[:, idx]

    def draw(self, band: Band, t: float) -> None:
        fill = band.rows(0, self.fill_bottom)
        if fill is None:
            return
        rows = self.rows_rgb[:, band.y0 : band.y0 + fill[1], None]
        band.rgb[:, : fill[1]] = rows
        if self.glow <= 0:
            return
        sx, sy = self.sun.at(t)
        reach = 2.6 * self.glow_sigma
        span = band.rows(sy - reach, min(sy + reach, self.fill_bottom))
        if span is None:
            return
        a, b = span
        c0, c1 = max(0, math.floor(sx - reach)), min(band.xs.shape[0], math.ceil(sx + reach))
        if c0 >= c1:
            return
        inv = np.float32(-0.5 / self.glow_sigma**2)
        # Each factor is shifted to reach exactly 0 at `reach`: no seam where the box ends.
        edge = math.exp(-0.5 * 2.6**2)
        scale = np.float32(1.0 / (1.0 - edge))
        gy = np.maximum(np.exp((band.ys[a:b] - sy) ** 2 * inv) - np.float32(edge), 0.0)
        gy *= scale * np.float32(self.glow)
        gx = np.maximum(np.exp((band.xs[c0:c1] - sx) ** 2 * inv) - np.float32(edge), 0.0) * scale
        # The glow is separable: colour·gy(y)·gx(x), written straight over the fill.
        for c in range(3):
            region = band.rgb[c, a:b, c0:c1]
            np.multiply((gy * np.float32(self.glow_colour[c]))[:, None], gx[None, :], out=region)
            region += rows[c, a:b]


class SunLayer:
    def __init__(self, path: SunPath, colours: tuple[RGB, RGB], *, striped: bool) -> None:
        self.path = path
        self.colours = colours
        self.striped = striped

    def draw(self, band: Band, t: float) -> None:
        sx, sy = self.path.at(t)
        r = self.path.radius
        span = band.rows(sy - r - 2, sy + r + 2)
        if span is None:
            return
        a, b = span
        c0, c1 = max(0, math.floor(sx - r - 2)), min(band.xs.shape[0], math.ceil(sx + r + 2))
        if c0 >= c1:
            return
        dy = band.ys[a:b] - np.float32(sy)
        dx = band.xs[c0:c1] - np.float32(sx)
        d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
        alpha = np.clip(np.float32(r + 0.5) - d, 0.0, 1.0)
        v = np.clip((dy / np.float32(r) + 1.0) * 0.5, 0.0, 1.0)  # 0 at the top, 1 at the bottom
        if self.striped:
            # Synthwave sun: horizontal gaps that widen towards the bottom.
            phase = (dy / np.float32(r * 0.13)) % 1.0
            gap = np.clip((v - 0.5) * 1.1, 0.0, 0.6)
            alpha *= (phase >= gap).astype(np.float32)[:, None]
        top, bottom = self.colours
        colours = np.stack([top[c] + (bottom[c] - top[c]) * v for c in range(3)])[:, :, None]
        blend(band.rgb[:, a:b, c0:c1], colours.astype(np.float32), alpha)


class DotsLayer:
    """Stars (twinkling, additive) or snowflakes (falling, blended)."""

    def __init__(
        self,
        rng: np.random.Generator,
        *,
        count: int,
        width: int,
        height: int,
        y_max: float,
        size: float,
        spread: float,  # how much bigger than `size` the largest dots get
        colour: RGB,
        falling: float,  # pixels per second; 0 for stars
    ) -> None:
        self.x = rng.uniform(0, width, count).astype(np.float32)
        # Stars crowd the top of the sky; snow is uniform.
        u = rng.random(count).astype(np.float32)
        self.y = (u**1.4 if falling == 0 else u) * np.float32(y_max)
        self.sigma = (size * (0.6 + rng.pareto(3.0, count).clip(0, spread))).astype(np.float32)
        self.weight = rng.uniform(0.35, 1.0, count).astype(np.float32)
        self.phase = rng.uniform(0, 2 * math.pi, count).astype(np.float32)
        self.rate = rng.uniform(1.0, 3.0, count).astype(np.float32)
        self.speed = (falling * rng.uniform(0.6, 1.4, count)).astype(np.float32)
        self.width, self.height = width, height
        self.colour = colour
        self.falling = falling > 0

    def draw(self, band: Band, t: float) -> None:
        t32 = np.float32(t)
        if self.falling:
            margin = np.float32(self.height * 0.05)
            y = (self.y + self.speed * t32) % (np.float32(self.height) + 2 * margin) - margin
            x = self.x + np.float32(self.height * 0.02) * np.sin(self.rate * 0.5 * t32 + self.phase)
            weight = self.weight
        else:
            x, y = self.x, self.y
            weight = self.weight * (0.7 + 0.3 * np.sin(self.rate * t32 + self.phase))
        reach = 3.0 * float(self.sigma.max()) + 2.0
        span = band.rows(float(y.min()) - reach, float(y.max()) + reach)
        if span is None:
            return
        a, b = span
        plane = np.zeros((b - a, band.rgb.shape[2]), np.float32)
        touched = splat(plane, band.y0 + a, x, y, self.sigma, weight.astype(np.float32))
        if self.falling:
            np.minimum(plane, 1.0, out=plane)
        amount = plane.reshape(-1)[touched]
        apply_sparse(band.rgb[:, a:b], self.colour, touched, amount, additive=not self.falling)


class TextureLayer:
    """Clouds or mist: a drifting noise texture, thresholded, over a vertical window.

    The threshold and the window are applied once on the coarse grid (the drift is
    horizontal, so the window stays put); a frame only upsamples and blends."""

    def __init__(
        self,
        noise: CoarseTexture,
        *,
        top: float,
        bottom: float,
        centre: float,
        threshold: tuple[float, float],
        opacity: float,
        colour: RGB,
        drift: float,
    ) -> None:
        ys = noise.row_centres()
        # A bump that is 1 at `centre` and 0 at the window's edges.
        half = np.where(ys < centre, centre - top, bottom - centre).astype(np.float32)
        bump: F32 = np.clip(1.0 - ((ys - centre) / np.maximum(half, 1.0)) ** 2, 0.0, 1.0)
        alpha = smoothstep(*threshold, noise.values) * (bump * np.float32(opacity))[:, None]
        self.alpha = CoarseTexture(alpha, noise.cell)
        self.top, self.bottom = top, bottom
        self.colour = colour
        self.drift = drift

    def draw(self, band: Band, t: float) -> None:
        span = band.rows(self.top, self.bottom)
        if span is None:
            return
        a, b = span
        alpha = self.alpha.sample(band, a, b, self.drift * t)
        blend(band.rgb[:, a:b], self.colour, alpha)


class FieldLayer:
    """A smooth per-frame field (rays, aurora, spiral) added as light or blended as paint."""

    def __init__(
        self, field: CoarseField, top: float, bottom: float, colour: RGB, *, additive: bool
    ) -> None:
        self.field = field
        self.top, self.bottom = top, bottom
        self.colour = colour
        self.additive = additive

    def draw(self, band: Band, t: float) -> None:
        span = band.rows(self.top, self.bottom)
        if span is None:
            return
        a, b = span
        alpha = self.field.sample(band, a, b, t)
        if self.additive:
            add_light(band.rgb[:, a:b], self.colour, alpha)
        else:
            blend(band.rgb[:, a:b], self.colour, np.clip(alpha, 0.0, 1.0))


class StripesLayer:
    def __init__(
        self, *, angle: float, period: float, colour: RGB, opacity: float, bottom: float
    ) -> None:
        self.cos, self.sin = math.cos(angle) / period, math.sin(angle) / period
        self.colour = colour
        self.opacity = opacity
        self.bottom = bottom
        self.edge = 1.5 / period

    def draw(self, band: Band, t: float) -> None:
        span = band.rows(0, self.bottom)
        if span is None:
            return
        a, b = span
        s = (band.ys[a:b] * np.float32(self.sin) - np.float32(0.08 * t))[:, None] + (
            band.xs * np.float32(self.cos)
        )[None, :]
        tri = (np.abs(s % 1.0 - 0.5) * 2.0).astype(np.float32, copy=False)
        alpha = smoothstep(0.5 - self.edge, 0.5 + self.edge, tri) * np.float32(self.opacity)
        fade = np.clip((self.bottom - band.ys[a:b]) / np.float32(self.bottom * 0.35), 0.0, 1.0)
        blend(band.rgb[:, a:b], self.colour, alpha * fade[:, None])


Profile = Callable[[F32], F32]  # world x (pixels) -> top row of the silhouette (pixels)


def ridge_profile(
    rng: np.random.Generator,
    *,
    base: float,
    amplitude: float,
    period: float,
    octaves: int,
    ridged: bool,
) -> Profile:
    lattices = rng.random((octaves, LATTICE), dtype=np.float32)

    def top(x: F32) -> F32:
        n = fbm_1d(lattices, x / np.float32(period), ridged=ridged)
        return (np.float32(base) - np.float32(amplitude) * n).astype(np.float32, copy=False)

    return top


def forest_profile(
    rng: np.random.Generator, *, ground: Profile, spacing: float, tree_height: float
) -> Profile:
    jitter = rng.uniform(-0.35, 0.35, LATTICE).astype(np.float32)
    heights = (tree_height * rng.uniform(0.55, 1.0, LATTICE)).astype(np.float32)
    slender = rng.uniform(0.2, 0.28, LATTICE).astype(np.float32)
    tiers = rng.integers(4, 7, LATTICE).astype(np.float32)

    def top(x: F32) -> F32:
        cell = np.floor(x / np.float32(spacing)).astype(np.intp)
        tallest = np.zeros_like(x)
        for k in (-2, -1, 0, 1, 2):
            i = (cell + k) % LATTICE
            centre = ((cell + k).astype(np.float32) + 0.5 + jitter[i]) * np.float32(spacing)
            h = heights[i]
            half_width = h * slender[i]
            d = np.abs(x - centre) / half_width
            # Saw-toothed sides read as tiers of branches.
            tree = h * (1.0 - d) - h * np.float32(0.09) * ((d * tiers[i]) % 1.0)
            np.maximum(tallest, tree, out=tallest)
        return ground(x) - tallest

    return top


@dataclass(frozen=True, slots=True)
class Skyline:
    starts: F32  # left edge of each building, periodic over `period`
    widths: F32
    heights: F32
    period: float
    lit: F32  # random table for lit windows
    sign: NDArray[np.intp]  # -1, or the accent colour of a neon sign on that building

    def building_at(self, x: F32) -> tuple[NDArray[np.intp], F32]:
        local = (x % np.float32(self.period)).astype(np.float32)
        idx: NDArray[np.intp] = np.searchsorted(self.starts, local, side="right") - 1
        return idx, local - self.starts[idx]


def make_skyline(rng: np.random.Generator, *, unit: float, tallest: float, signs: bool) -> Skyline:
    widths = (unit * rng.uniform(0.045, 0.11, LATTICE)).astype(np.float32)
    starts = np.concatenate([[0.0], np.cumsum(widths)[:-1]]).astype(np.float32)
    heights = (tallest * rng.uniform(0.25, 1.0, LATTICE) ** 1.5).astype(np.float32)
    sign = np.where(rng.random(LATTICE) < (0.35 if signs else 0.0), rng.integers(0, 3, LATTICE), -1)
    return Skyline(
        starts=starts,
        widths=widths,
        heights=heights,
        period=float(widths.sum()),
        lit=rng.random(4096).astype(np.float32),  # a power of two: keys are masked
        sign=sign.astype(np.intp),
    )


def skyline_profile(skyline: Skyline, base: float) -> Profile:
    def top(x: F32) -> F32:
        idx, x_in = skyline.building_at(x)
        h = skyline.heights[idx]
        # A thin antenna on the tallest buildings.
        mast = (np.abs(x_in - skyline.widths[idx] * 0.5) < 1.5) & (h > skyline.heights.max() * 0.7)
        return np.float32(base) - h - np.where(mast, h * 0.18, 0.0).astype(np.float32)

    return top


class SilhouetteLayer:
    """Ground shapes (mountains, hills, trees, buildings) filled below a profile."""

    def __init__(
        self,
        profile: Profile,
        *,
        colour: RGB,
        haze: RGB,
        bottom: float,
        pan: float,
        skyline: Skyline | None = None,
        window: RGB | None = None,
        accents: Sequence[RGB] = (),
        unit: float = 1.0,
        caps: RGB | None = None,
    ) -> None:
        self.profile = profile
        self.caps = caps  # colour of snow on the upper slopes
        self.colour, self.haze = colour, haze
        self.bottom = bottom
        self.pan = pan
        self.skyline = skyline
        self.window = window
        self.accents = np.array(accents, np.float32).reshape(-1, 3)
        self.unit = unit

    def tops(self, xs: F32, t: float) -> F32:
        return self.profile(xs + np.float32(self.pan * t))

    def draw(self, band: Band, t: float) -> None:
        top = self.tops(band.xs, t)
        t_min, t_max = float(top.min()), float(top.max())
        span = band.rows(t_min - 1, self.bottom)
        if span is None:
            return
        a, b = span
        ys = band.ys[a:b]
        # Haze near the top of the shape, the plain colour lower down.
        fade = np.clip((ys - np.float32(t_min)) / np.float32(max(t_max - t_min, 1.0) * 1.5), 0, 1)
        colours = np.stack(
            [self.haze[c] + (self.colour[c] - self.haze[c]) * fade for c in range(3)]
        ).astype(np.float32)
        # Rows at or below ceil(top) are covered; the row just above gets the fraction.
        covered_from = np.ceil(top)
        edge_end = min(b, max(a, math.ceil(t_max) - band.y0))
        if edge_end > a:
            inside = (ys[: edge_end - a] - np.float32(0.5))[:, None] >= covered_from[None, :]
            for c in range(3):
                np.copyto(band.rgb[c, a:edge_end], colours[c, : edge_end - a, None], where=inside)
        if b > edge_end:
            band.rgb[:, edge_end:b] = colours[:, edge_end - a :, None]
        edge_row = covered_from.astype(np.intp) - 1 - band.y0
        columns = np.flatnonzero((edge_row >= a) & (edge_row < b))
        if columns.size:
            rows_at = edge_row[columns]
            coverage = (covered_from - top)[columns]
            for c in range(3):
                old = band.rgb[c, rows_at, columns]
                new = colours[c, rows_at - a]
                band.rgb[c, rows_at, columns] = old + (new - old) * coverage
        if self.caps is not None:
            self._snow_caps(band, top, a, b, self.caps)
        if self.skyline is not None and self.window is not None:
            self._windows(band, t, top, a, b, self.skyline, self.window)

    def _snow_caps(self, band: Band, top: F32, a: int, b: int, caps: RGB) -> None:
        t_min, t_max = float(top.min()), float(top.max())
        # Thicker snow on the higher slopes, none on the lowest third.
        high = np.clip((np.float32(t_max) - top) / np.float32(max(t_max - t_min, 1.0)) - 0.33, 0, 1)
        snow_line = top + high * np.float32(self.unit * 0.08)
        span = band.rows(t_min - 1, float(snow_line.max()) + 1)
        if span is None:
            return
        r0, r1 = max(a, span[0]), min(b, span[1])
        if r0 >= r1:
            return
        ys = band.ys[r0:r1, None]
        cover = np.clip(snow_line[None, :] - ys + 0.5, 0.0, 1.0)
        cover *= np.clip(ys - top[None, :] + 0.5, 0.0, 1.0)
        blend(band.rgb[:, r0:r1], caps, (cover * np.float32(0.9)).astype(np.float32))

    def _windows(
        self, band: Band, t: float, top: F32, a: int, b: int, sky: Skyline, window: RGB
    ) -> None:
        idx, x_in = sky.building_at(band.xs + np.float32(self.pan * t))
        cell_w, cell_h = self.unit * 0.011, self.unit * 0.016
        column = np.floor(x_in / np.float32(cell_w)).astype(np.intp)
        in_column = ((x_in % np.float32(cell_w)) < cell_w * 0.55) & (x_in > cell_w * 0.5)
        in_column &= x_in < sky.widths[idx] - cell_w * 0.5
        ys = band.ys[a:b]
        row = np.floor(ys / np.float32(cell_h)).astype(np.intp)
        in_row = (ys % np.float32(cell_h)) < cell_h * 0.5
        key = (idx * 97 + column * 13).astype(np.int32)[None, :] + (row * 131).astype(np.int32)[
            :, None
        ]
        value = sky.lit[key & np.int32(sky.lit.shape[0] - 1)]
        # Some windows switch on and off slowly.
        threshold = 0.3 + 0.04 * math.sin(0.9 * t)
        mask = (value < threshold) & in_row[:, None] & in_column[None, :]
        mask &= ys[:, None] > top[None, :] + np.float32(cell_h)
        lit = np.flatnonzero(mask)
        apply_sparse(band.rgb[:, a:b], window, lit, 0.9, additive=False)
        if not self.accents.shape[0]:
            return
        # Neon signs: a vertical bar on some buildings, in one of the accent colours.
        sign = sky.sign[idx]
        bar = (sign >= 0) & (np.abs(x_in - sky.widths[idx] * 0.22) < self.unit * 0.004)
        if not bar.any():
            return
        height = sky.heights[idx]
        inside = (ys[:, None] > top[None, :] + height * 0.08) & (
            ys[:, None] < top[None, :] + height * 0.55
        )
        colours = self.accents[np.maximum(sign, 0) % self.accents.shape[0]].T[:, None, :]
        flicker = np.float32(0.85 + 0.15 * math.sin(7.0 * t))
        blend(
            band.rgb[:, a:b],
            colours.astype(np.float32),
            (inside & bar[None, :]).astype(np.float32) * flicker,
        )


class WaterLayer:
    def __init__(
        self,
        *,
        horizon: float,
        height: int,
        sky: SkyLayer,
        palette: Palette,
        shores: Sequence[SilhouetteLayer],
        ripples: CoarseTexture,
        sun: SunPath | None,
    ) -> None:
        self.horizon = horizon
        self.height = height
        ys = np.arange(height, dtype=np.float32) + 0.5
        depth = np.clip((ys - horizon) / (height - horizon), 0.0, 1.0)
        mirrored = sky.colour_at(np.float32(horizon) - (ys - np.float32(horizon)) * 0.9)
        water = np.array(palette.water, np.float32)[:, None]
        # The sky shows in the water near the horizon; deeper down it is the water's colour.
        self.rows_rgb = (mirrored + (water - mirrored) * (0.55 + 0.4 * depth)) * (1 - 0.25 * depth)
        self.depth = depth
        self.shores = shores
        front = shores[-1].colour if shores else palette.land_near
        self.reflection = mix(mix(front, palette.water, 0.3), (0.0, 0.0, 0.0), 0.25)
        self.ripples = ripples
        self.sun = sun
        self.sheen = mix(palette.sky[2], (1.0, 1.0, 1.0), 0.4)
        self.sun_colour = palette.sun[1]

    def draw(self, band: Band, t: float) -> None:
        span = band.rows(self.horizon, self.height)
        if span is None:
            return
        a, b = span
        band.rgb[:, a:b] = self.rows_rgb[:, band.y0 + a : band.y0 + b, None]
        ripple = self.ripples.sample(band, a, b, 0.02 * self.height * t)
        ys = band.ys[a:b]
        if self.shores:
            tops = np.minimum.reduce([s.tops(band.xs, t) for s in self.shores])
            reflected = np.float32(self.horizon) + (np.float32(self.horizon) - tops) * 0.85
            wobble = (ripple - 0.5) * np.float32(self.height * 0.006)
            alpha = np.clip(reflected[None, :] - ys[:, None] + wobble, 0.0, 1.0) * 0.8
            blend(band.rgb[:, a:b], self.reflection, alpha.astype(np.float32))
        depth = self.depth[band.y0 + a : band.y0 + b]
        crest = 0.5 + 0.5 * np.sin(np.float32(7.0) / (depth + np.float32(0.04)) - np.float32(t))
        shine = smoothstep(0.55, 0.85, ripple) * (crest * (0.06 + 0.22 * depth))[:, None]
        add_light(band.rgb[:, a:b], self.sheen, shine)
        if self.sun is not None:
            sx, _ = self.sun.at(t)
            spread = self.sun.radius * (1.2 + 3.0 * depth)
            path = np.exp(-(((band.xs[None, :] - np.float32(sx)) / spread[:, None]) ** 2))
            glitter = smoothstep(0.45, 0.8, ripple) * path * (crest * 0.8)[:, None]
            add_light(band.rgb[:, a:b], self.sun_colour, glitter.astype(np.float32))


class GridLayer:
    """A synthwave floor: glowing lines receding to the horizon and scrolling towards us."""

    def __init__(
        self,
        *,
        horizon: float,
        width: int,
        height: int,
        colour: RGB,
        floor: tuple[RGB, RGB] | None,
        unit: float,
    ) -> None:
        self.horizon, self.width, self.height = horizon, width, height
        self.colour = colour
        self.floor = floor
        self.spacing = unit * 0.16
        self.line = max(1.0, unit * 0.0012)

    def draw(self, band: Band, t: float) -> None:
        span = band.rows(self.horizon, self.height)
        if span is None:
            return
        a, b = span
        ys = band.ys[a:b]
        depth = self.height - self.horizon
        p = np.maximum((ys - np.float32(self.horizon)) / np.float32(depth), 1e-3)
        if self.floor is not None:
            band.rgb[:, a:b] = row_colours([0.0, 1.0], self.floor, p)[:, :, None]
        gap = np.float32(self.spacing) * p
        u = (band.xs - np.float32(self.width * 0.5))[None, :] / gap[:, None]
        dist = np.abs(u - np.round(u)) * gap[:, None]
        lw = np.float32(self.line) * (0.6 + p)
        vertical = np.clip(1.0 - dist / (lw * 1.5)[:, None], 0.0, 1.0)
        vertical += 0.25 * np.clip(1.0 - dist / (lw * 6.0)[:, None], 0.0, 1.0)
        # Horizontal lines sit at equal steps of depth 1/p, so they crowd at the horizon.
        k = 0.9
        phase = np.float32(k) / p + np.float32(0.8 * t)
        px_per_unit = p * p * np.float32(depth / k)
        horizontal = np.clip(1.0 - np.abs(phase - np.round(phase)) * px_per_unit / lw, 0.0, 1.0)
        fade = np.clip(p * 5.0, 0.0, 1.0)
        intensity = np.maximum(vertical, horizontal[:, None]) * fade[:, None]
        intensity += (np.exp(-p * 25.0) * 0.6)[:, None]  # the glow along the horizon
        add_light(band.rgb[:, a:b], self.colour, intensity.astype(np.float32))


@dataclass(slots=True)
class Bubble:
    x: float
    y: float
    radius: float
    colour: RGB
    opacity: float
    rise: float
    sway: float
    phase: float


class BubblesLayer:
    def __init__(self, bubbles: list[Bubble], height: int, *, additive: bool) -> None:
        self.bubbles = bubbles
        self.height = height
        self.additive = additive

    def draw(self, band: Band, t: float) -> None:
        for bubble in self.bubbles:
            r = bubble.radius
            span_y = self.height + 4 * r
            y = (bubble.y - bubble.rise * t + 2 * r) % span_y - 2 * r
            x = bubble.x + bubble.sway * math.sin(0.6 * t + bubble.phase)
            span = band.rows(y - r - 2, y + r + 2)
            if span is None:
                continue
            a, b = span
            c0, c1 = max(0, math.floor(x - r - 2)), min(band.xs.shape[0], math.ceil(x + r + 2))
            if c0 >= c1:
                continue
            dy = band.ys[a:b] - np.float32(y)
            dx = band.xs[c0:c1] - np.float32(x)
            d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
            disc: F32 = np.clip(np.float32(r + 0.5) - d, 0.0, 1.0)
            rim: F32 = np.clip(
                1.0 - np.abs(d - np.float32(r * 0.9)) / np.float32(r * 0.1 + 1), 0, 1
            )
            alpha = (disc * 0.45 + rim * 0.55) * np.float32(bubble.opacity)
            if self.additive:
                add_light(band.rgb[:, a:b, c0:c1], bubble.colour, alpha)
            else:
                blend(band.rgb[:, a:b, c0:c1], bubble.colour, alpha)


class RainLayer:
    def __init__(
        self, rng: np.random.Generator, *, count: int, width: int, height: int, colour: RGB
    ) -> None:
        self.length = height * rng.uniform(0.03, 0.07, count).astype(np.float32)
        self.x = rng.uniform(-0.1 * width, width, count).astype(np.float32)
        self.y = rng.uniform(0, height, count).astype(np.float32)
        self.speed = (height * rng.uniform(0.9, 1.4, count)).astype(np.float32)
        self.weight = rng.uniform(0.25, 0.6, count).astype(np.float32)
        self.slant = 0.18
        self.height = height
        self.colour = colour
        self.thick = max(1, round(height / 1000))

    def draw(self, band: Band, t: float) -> None:
        span_y = np.float32(self.height) + self.length
        head = (self.y + self.speed * np.float32(t)) % span_y
        steps = int(self.length.max())
        s = np.arange(steps, dtype=np.float32)[None, :]
        along = np.minimum(s, self.length[:, None])
        y = head[:, None] - along
        x = self.x[:, None] + y * np.float32(self.slant)
        weight = self.weight[:, None] * (1.0 - along / self.length[:, None])
        ry = np.floor(y).astype(np.intp) - band.y0
        rows, width = band.rgb.shape[1:]
        plane = np.zeros((rows, width), np.float32)
        touched = []
        for dx in range(self.thick):
            px = np.floor(x).astype(np.intp) + dx
            keep = (ry >= 0) & (ry < rows) & (px >= 0) & (px < width)
            touched.append((ry * width + px)[keep])
            np.add.at(plane.reshape(-1), touched[-1], weight[keep])
        np.minimum(plane, 1.0, out=plane)
        flat = np.concatenate(touched)
        apply_sparse(band.rgb, self.colour, flat, plane.reshape(-1)[flat], additive=False)


class Scene:
    """The layers of one composition. Not thread-safe: it reuses one scratch band."""

    def __init__(
        self, width: int, height: int, layers: Sequence[Layer], *, vignette: float
    ) -> None:
        self.width, self.height = width, height
        self.layers = tuple(layers)
        x = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
        self.vignette = vignette
        self.vignette_x = (1.0 - vignette * x * x).astype(np.float32)
        rows = max(2, (BAND_PIXELS // width) & ~1)  # even, for 4:2:0 chroma
        self.bands = [(y0, min(height, y0 + rows)) for y0 in range(0, height, rows)]
        # Zeroed once and reused: every pixel is painted each frame, and if a layer ever
        # missed one it would still hold a deterministic value.
        self._scratch = np.zeros((3, self.bands[0][1], width), np.float32)

    def _paint(self, y0: int, y1: int, t: float) -> tuple[F32, F32]:
        """The band's clipped RGB planes and its vignette factor (applied by the caller, on
        fewer planes for YUV)."""
        rgb = self._scratch[:, : y1 - y0]
        ys = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5)
        band = Band(
            rgb=rgb,
            y0=y0,
            y1=y1,
            ys=ys,
            xs=np.arange(self.width, dtype=np.float32) + np.float32(0.5),
        )
        for layer in self.layers:
            layer.draw(band, t)
        np.clip(rgb, 0.0, 1.0, out=rgb)
        v = ys / np.float32(self.height) * 2 - 1
        vignette_y = (1.0 - np.float32(self.vignette) * v * v).astype(np.float32, copy=False)
        return rgb, vignette_y[:, None] * self.vignette_x[None, :]

    def render_rgb(self, t: float) -> NDArray[np.uint8]:
        out = np.empty((self.height, self.width, 3), np.uint8)
        for y0, y1 in self.bands:
            rgb, vignette = self._paint(y0, y1, t)
            rgb *= (vignette * np.float32(255.0))[None]
            rgb += np.float32(0.5)
            out[y0:y1] = rgb.transpose(1, 2, 0)  # the float-to-uint8 cast truncates
        return out

    def render_yuv420(self, t: float) -> NDArray[np.uint8]:
        """One frame as planar BT.709 limited-range YUV 4:2:0, laid out for PyAV."""
        w, h = self.width, self.height
        flat = np.empty(w * h * 3 // 2, np.uint8)
        luma = flat[: w * h].reshape(h, w)
        cb = flat[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)
        cr = flat[w * h * 5 // 4 :].reshape(h // 2, w // 2)
        kr, kb = 0.2126, 0.0722
        kg = 1.0 - kr - kb
        for y0, y1 in self.bands:
            (r, g, b), vignette = self._paint(y0, y1, t)
            y = r * np.float32(219.0 * kr)
            y += g * np.float32(219.0 * kg)
            y += b * np.float32(219.0 * kb)
            y *= vignette
            y += np.float32(16.5)
            luma[y0:y1] = y
            # Chroma is linear in R, G, B: average each 2×2 block first.
            ra, ga, ba = ((p[0::2] + p[1::2]) for p in (r, g, b))
            ra, ga, ba = ((q[:, 0::2] + q[:, 1::2]) * vignette[0::2, 0::2] for q in (ra, ga, ba))
            ya = ra * np.float32(kr) + ga * np.float32(kg) + ba * np.float32(kb)
            cb[y0 // 2 : y1 // 2] = (ba - ya) * np.float32(28.0 / (1.0 - kb)) + np.float32(128.5)
            cr[y0 // 2 : y1 // 2] = (ra - ya) * np.float32(28.0 / (1.0 - kr)) + np.float32(128.5)
        return flat.reshape(h * 3 // 2, w)
