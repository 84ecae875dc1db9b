"""Lays out a scene from a theme: where the horizon is, which layers, their sizes and motion.

Sizes are fractions of the frame (`height`, or `unit` = √(width·height) for round things), so
a scene looks the same at every resolution; speeds are per second of video.
"""

from __future__ import annotations

import math

import numpy as np

from vivix.renderer.palette import RGB, Palette, mix, oklch
from vivix.renderer.scene import (
    F32,
    Bubble,
    BubblesLayer,
    CoarseField,
    DotsLayer,
    FieldFunction,
    FieldLayer,
    GridLayer,
    Layer,
    RainLayer,
    Scene,
    SilhouetteLayer,
    SkyLayer,
    StripesLayer,
    SunLayer,
    SunPath,
    TextureLayer,
    WaterLayer,
    fbm_texture,
    forest_profile,
    make_skyline,
    ridge_profile,
    skyline_profile,
)
from vivix.renderer.theme import Theme

LAND = ("mountains", "hills", "forest", "city")
LAYERS_PER_LAND = {"mountains": 2, "hills": 2, "forest": 3, "city": 2}
GLOW = {"day": 0.25, "dawn": 0.5, "dusk": 0.55, "night": 0.3, "neon": 0.45}


def _sun_path(
    theme: Theme, rng: np.random.Generator, width: int, height: int, horizon: float, ground: bool
) -> SunPath:
    unit = math.sqrt(width * height)
    sx = width * float(rng.uniform(0.2, 0.8))
    if theme.light == "neon":
        r = 0.2 * min(width, height)
        sy = horizon - 0.3 * r if ground else height * 0.45
        return SunPath(width * float(rng.uniform(0.4, 0.6)), sy, 0.0, -0.004 * height, r)
    if theme.light in ("dawn", "dusk"):
        r = 0.055 * unit
        sy = horizon - r * float(rng.uniform(0.3, 2.0)) if ground else height * 0.55
        rising = -1.0 if theme.light == "dawn" else 1.0
        return SunPath(sx, sy, 0.0, rising * 0.006 * height, r)
    r = (0.04 if theme.light == "day" else 0.03) * unit
    sy = min(height * float(rng.uniform(0.1, 0.3)), horizon - 2.5 * r)
    return SunPath(sx, sy, 0.004 * height, 0.0, r)


def _aurora(height: int, sky_bottom: float, rng: np.random.Generator) -> FieldFunction:
    p1, p2 = (float(v) for v in rng.uniform(0, 2 * math.pi, 2))
    h = np.float32(height)

    def field(gx: F32, gy: F32, t: float) -> F32:
        centre = (
            np.float32(sky_bottom * 0.5)
            + 0.08 * h * np.sin(gx / (0.35 * h) + np.float32(0.3 * t + p1))
            + 0.04 * h * np.sin(gx / (0.13 * h) - np.float32(0.5 * t - p2))
        )
        below = gy - centre
        curtain = np.where(
            below < 0, np.exp(below / (0.16 * h)), np.exp(-((below / (0.025 * h)) ** 2))
        )
        # Irregular folds, brighter in some stretches of the curtain than others.
        folds = 0.5 + 0.5 * np.sin(
            gx / (0.012 * h) + 3.0 * np.sin(gx / (0.07 * h) + np.float32(0.15 * t + p2))
        )
        stretch = 0.3 + 0.7 * (0.5 + 0.5 * np.sin(gx / (0.25 * h) + np.float32(0.2 * t + p1)))
        out: F32 = (0.7 * curtain * (0.35 + 0.65 * folds) * stretch).astype(np.float32)
        return out

    return field


def _spiral(width: int, height: int, sky_bottom: float, rng: np.random.Generator) -> FieldFunction:
    cx = width * float(rng.uniform(0.3, 0.7))
    cy = sky_bottom * float(rng.uniform(0.35, 0.55))
    radius = 0.45 * min(width, sky_bottom * 1.4)
    arms = int(rng.integers(3, 6))
    twist = float(rng.uniform(2.5, 4.5)) * float(rng.choice([-1.0, 1.0]))

    def field(gx: F32, gy: F32, t: float) -> F32:
        dx, dy = gx - np.float32(cx), gy - np.float32(cy)
        r = np.sqrt(dx * dx + dy * dy) / np.float32(radius) + np.float32(1e-3)
        angle = np.arctan2(dy, dx)
        s = 0.5 + 0.5 * np.sin(arms * angle + twist * np.log(r) - np.float32(0.7 * t))
        window = np.exp(-(r**2) * 1.2) * (1.0 - np.exp(-((r / 0.12) ** 2)))
        out: F32 = (0.6 * s * s * window).astype(np.float32)
        return out

    return field


def _rays(sun: SunPath, height: int, rng: np.random.Generator) -> FieldFunction:
    count = int(rng.integers(9, 15))
    wobble = float(rng.uniform(0, 2 * math.pi))

    def field(gx: F32, gy: F32, t: float) -> F32:
        sx, sy = sun.at(t)
        dx, dy = gx - np.float32(sx), gy - np.float32(sy)
        r = np.sqrt(dx * dx + dy * dy)
        angle = np.arctan2(dy, dx)
        s = 0.5 + 0.5 * np.sin(count * angle + 1.5 * np.sin(3 * angle + wobble) + 0.25 * t)
        falloff = np.exp(-r / np.float32(0.45 * height)) * (
            1.0 - np.exp(-((r / np.float32(sun.radius * 1.5)) ** 2))
        )
        out: F32 = (0.4 * s**3 * falloff).astype(np.float32)
        return out

    return field


def compose_scene(
    theme: Theme,
    palette: Palette,
    *,
    width: int,
    height: int,
    duration: float,
    rng: np.random.Generator,
) -> Scene:
    unit = math.sqrt(width * height)
    motifs = set(theme.motifs)
    mods = theme.modifiers
    land = [kind for kind in LAND if kind in motifs]
    floor = "water" in motifs or "grid" in motifs
    if floor:
        horizon = height * float(rng.uniform(0.58, 0.66))
    elif land:
        horizon = height * float(rng.uniform(0.46, 0.56))
    else:
        horizon = float(height)
    ground = floor or bool(land)
    cell = max(2.0, unit / 240.0)  # coarse-grid cell for smooth fields, in pixels
    # Room for textures to drift sideways; every drift below is under 0.05·height per second.
    extra_width = 0.05 * height * (duration + 1.0) + 8 * cell

    sun = _sun_path(theme, rng, width, height, horizon, ground)
    # Rain and storms hide the sun behind clouds.
    overcast = "storm" in mods or "rain" in motifs
    glow = GLOW[theme.light] * (0.35 if overcast else 1.0)
    fill_bottom = min(float(height), math.ceil(horizon) + 4.0) if ground else float(height)
    sky = SkyLayer(palette, horizon, height, sun, glow, fill_bottom=fill_bottom)
    layers: list[Layer] = [sky]

    sky_bottom = horizon
    if "stars" in motifs:
        count = int(300 * (width / height) * (sky_bottom / height)) + 40
        layers.append(
            DotsLayer(
                rng,
                count=count,
                width=width,
                height=height,
                y_max=sky_bottom,
                size=unit * 0.0007,
                spread=3.0,
                colour=palette.star,
                falling=0.0,
            )
        )
    if "aurora" in motifs:
        aurora = oklch(0.82, 0.17, 160.0) if theme.light != "neon" else palette.accents[1]
        field = CoarseField(width, height, cell, _aurora(height, sky_bottom, rng))
        layers.append(FieldLayer(field, 0.0, sky_bottom, aurora, additive=True))
    if "spiral" in motifs:
        field = CoarseField(width, height, cell, _spiral(width, height, sky_bottom, rng))
        layers.append(FieldLayer(field, 0.0, sky_bottom, palette.accents[0], additive=False))
    if "stripes" in motifs:
        layers.append(
            StripesLayer(
                angle=float(rng.uniform(0.35, 1.2)),
                period=unit * 0.07,
                colour=palette.accents[2],
                opacity=0.22,
                bottom=sky_bottom,
            )
        )
    if "rays" in motifs:
        field = CoarseField(width, height, cell, _rays(sun, height, rng))
        layers.append(FieldLayer(field, 0.0, sky_bottom, palette.glow, additive=True))
    if not overcast:
        layers.append(SunLayer(sun, palette.sun, striped=theme.light == "neon"))
    if "clouds" in motifs or overcast:
        bottom = horizon * 0.85 if ground else height * 0.75
        layers.append(
            TextureLayer(
                fbm_texture(rng, width + extra_width, height, cell, (0.5 * height, 0.2 * height)),
                top=0.0,
                bottom=bottom,
                centre=bottom * 0.4,
                threshold=(0.3, 0.75) if overcast else (0.45, 0.8),
                opacity=0.92,
                colour=palette.cloud,
                drift=0.012 * height,
            )
        )

    misty = "mist" in motifs or "mist" in mods
    mist_texture = (
        fbm_texture(rng, width + extra_width, height, cell, (0.9 * height, 0.08 * height))
        if misty
        else None
    )
    shapes = [(kind, k) for kind in land for k in range(LAYERS_PER_LAND[kind])]
    silhouettes: list[SilhouetteLayer] = []
    for i, (kind, k) in enumerate(shapes):
        nearness = (i + 1) / len(shapes)
        spread = (i / (len(shapes) - 1)) ** 1.3 if len(shapes) > 1 else 0.0
        # Trees and towers may stand far apart in depth; ranges of peaks overlap more.
        depth_range = 0.75 if "forest" in land or "city" in land else 0.4
        base = horizon + 1.0 if floor else horizon + (height - horizon) * depth_range * spread
        bottom = horizon + 2.0 if floor else float(height)
        colour = mix(palette.land_far, palette.land_near, nearness**0.9)
        haze = mix(colour, palette.sky[2], 0.12 + 0.3 * (1.0 - nearness))
        scale = 0.75 if floor else 1.0
        skyline = None
        if kind == "mountains":
            profile = ridge_profile(
                rng,
                base=base,
                amplitude=(0.34, 0.22)[k] * height * scale,
                period=(0.55, 0.35)[k] * height,
                octaves=6,
                ridged=True,
            )
        elif kind == "hills":
            profile = ridge_profile(
                rng,
                base=base,
                amplitude=(0.1, 0.08)[k] * height * scale,
                period=(0.7, 0.5)[k] * height,
                octaves=3,
                ridged=False,
            )
        elif kind == "forest":
            ground_line = ridge_profile(
                rng,
                base=base,
                amplitude=0.04 * height,
                period=0.8 * height,
                octaves=2,
                ridged=False,
            )
            profile = forest_profile(
                rng,
                ground=ground_line,
                spacing=(0.012, 0.022, 0.05)[k] * height * scale,
                tree_height=(0.08, 0.16, 0.4)[k] * height * scale,
            )
        else:
            skyline = make_skyline(
                rng,
                unit=height * (0.7 + 0.3 * k),
                tallest=(0.3, 0.26)[k] * height * scale,
                signs=theme.light == "neon" and k == 1,
            )
            profile = skyline_profile(skyline, base)
        layer = SilhouetteLayer(
            profile,
            colour=colour,
            haze=haze,
            bottom=bottom,
            pan=-0.02 * height * (0.1 + nearness),
            skyline=skyline,
            window=mix(palette.window, colour, 0.5 * (1.0 - nearness)) if skyline else None,
            accents=palette.accents if skyline is not None else (),
            unit=height * (0.7 + 0.3 * k),
            caps=mix(palette.sky[2], (1.0, 1.0, 1.0), 0.6)
            if kind == "mountains" and "snow" in mods
            else None,
        )
        layers.append(layer)
        silhouettes.append(layer)
        if mist_texture is not None and not floor and i < len(shapes) - 1:
            layers.append(
                TextureLayer(
                    mist_texture,
                    top=base - 0.16 * height,
                    bottom=base + 0.08 * height,
                    centre=base,
                    threshold=(0.05, 0.95),
                    opacity=0.8,
                    colour=palette.mist,
                    drift=0.02 * height,
                )
            )

    if "water" in motifs:
        layers.append(
            WaterLayer(
                horizon=horizon,
                height=height,
                sky=sky,
                palette=palette,
                shores=silhouettes,
                ripples=fbm_texture(
                    rng, width + extra_width, height, cell, (0.3 * height, 0.015 * height), 3
                ),
                sun=sun if not overcast and sun.y < horizon else None,
            )
        )
    if "grid" in motifs:
        dark: RGB = mix(palette.land_near, (0.0, 0.0, 0.0), 0.6)
        layers.append(
            GridLayer(
                horizon=horizon,
                width=width,
                height=height,
                colour=palette.accents[0] if palette.is_dark else palette.accents[1],
                floor=None if "water" in motifs else (palette.land_near, dark),
                unit=unit,
            )
        )

    if "bubbles" in motifs:
        bubbles = [
            Bubble(
                x=width * float(rng.random()),
                y=height * float(rng.random()),
                radius=unit * float(rng.uniform(0.012, 0.06)),
                colour=palette.accents[int(rng.integers(0, 3))],
                opacity=float(rng.uniform(0.25, 0.6)),
                rise=height * float(rng.uniform(0.02, 0.07)),
                sway=height * float(rng.uniform(0.005, 0.02)),
                phase=float(rng.uniform(0, 2 * math.pi)),
            )
            for _ in range(int(rng.integers(14, 26)))
        ]
        layers.append(BubblesLayer(bubbles, height, additive=palette.is_dark))
    if misty and mist_texture is not None:
        top = horizon - 0.22 * height if ground else height * 0.3
        bottom = horizon + 0.3 * height if land and not floor else height * 1.1
        layers.append(
            TextureLayer(
                mist_texture,
                top=top,
                bottom=bottom,
                centre=(horizon if ground else height * 0.8),
                threshold=(0.15, 1.0),
                opacity=0.35 if land and not floor else 0.6,
                colour=palette.mist,
                drift=0.03 * height,
            )
        )
    if "snow" in motifs:
        layers.append(
            DotsLayer(
                rng,
                count=int(260 * width / height) + 60,
                width=width,
                height=height,
                y_max=float(height),
                size=unit * 0.0016,
                spread=1.0,
                colour=(0.97, 0.98, 1.0),
                falling=0.07 * height,
            )
        )
    if "rain" in motifs:
        layers.append(
            RainLayer(
                rng,
                count=int(380 * width / height) + 80,
                width=width,
                height=height,
                colour=mix(palette.sky[2], (1.0, 1.0, 1.0), 0.5),
            )
        )
    return Scene(width, height, layers, vignette=0.22 if palette.is_dark else 0.12)
