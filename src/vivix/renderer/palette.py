"""Colours of a scene, picked in OKLCH so that lightness means the same for every hue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vivix.renderer.theme import Theme

RGB = tuple[float, float, float]
LCH = tuple[float, float, float]  # OKLCH lightness 0..1, chroma ~0..0.3, hue in degrees


@dataclass(frozen=True, slots=True)
class Lighting:
    sky: tuple[LCH, LCH, LCH]  # zenith, middle, horizon
    sun: tuple[LCH, LCH]  # top and bottom of the disc
    glow: LCH
    land_lightness: float
    land_hue: float  # when the prompt names no hue
    water_lightness: float
    cloud: LCH
    window: LCH
    is_dark: bool


LIGHTINGS: dict[str, Lighting] = {
    "day": Lighting(
        sky=((0.60, 0.12, 252.0), (0.77, 0.08, 245.0), (0.93, 0.03, 230.0)),
        sun=((0.99, 0.03, 100.0), (0.97, 0.06, 90.0)),
        glow=(0.97, 0.06, 90.0),
        land_lightness=0.42,
        land_hue=145.0,
        water_lightness=0.50,
        cloud=(0.98, 0.01, 250.0),
        window=(0.80, 0.03, 240.0),
        is_dark=False,
    ),
    "dawn": Lighting(
        sky=((0.55, 0.08, 280.0), (0.77, 0.10, 355.0), (0.91, 0.10, 70.0)),
        sun=((0.99, 0.05, 100.0), (0.93, 0.11, 70.0)),
        glow=(0.92, 0.12, 60.0),
        land_lightness=0.34,
        land_hue=300.0,
        water_lightness=0.42,
        cloud=(0.90, 0.06, 15.0),
        window=(0.86, 0.12, 80.0),
        is_dark=False,
    ),
    "dusk": Lighting(
        sky=((0.30, 0.09, 290.0), (0.57, 0.16, 20.0), (0.80, 0.15, 62.0)),
        sun=((0.96, 0.12, 95.0), (0.76, 0.19, 38.0)),
        glow=(0.78, 0.17, 48.0),
        land_lightness=0.20,
        land_hue=300.0,
        water_lightness=0.30,
        cloud=(0.55, 0.12, 12.0),
        window=(0.86, 0.14, 80.0),
        is_dark=False,
    ),
    "night": Lighting(
        sky=((0.14, 0.04, 270.0), (0.20, 0.05, 265.0), (0.33, 0.06, 255.0)),
        sun=((0.97, 0.02, 95.0), (0.92, 0.03, 90.0)),  # the moon
        glow=(0.55, 0.05, 250.0),
        land_lightness=0.11,
        land_hue=265.0,
        water_lightness=0.16,
        cloud=(0.30, 0.03, 260.0),
        window=(0.88, 0.13, 85.0),
        is_dark=True,
    ),
    "neon": Lighting(
        sky=((0.13, 0.06, 295.0), (0.24, 0.13, 315.0), (0.48, 0.21, 345.0)),
        sun=((0.93, 0.17, 95.0), (0.62, 0.26, 350.0)),
        glow=(0.60, 0.22, 340.0),
        land_lightness=0.10,
        land_hue=290.0,
        water_lightness=0.15,
        cloud=(0.30, 0.10, 310.0),
        window=(0.80, 0.16, 200.0),
        is_dark=True,
    ),
}


@dataclass(frozen=True, slots=True)
class Palette:
    sky: tuple[RGB, RGB, RGB]  # zenith, middle, horizon
    land_far: RGB
    land_near: RGB
    water: RGB
    sun: tuple[RGB, RGB]
    glow: RGB
    accents: tuple[RGB, RGB, RGB]
    cloud: RGB
    mist: RGB
    star: RGB
    window: RGB
    is_dark: bool


def _linear_to_srgb(c: float) -> float:
    return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055


def _oklch_to_linear(lightness: float, chroma: float, hue: float) -> tuple[float, float, float]:
    a = chroma * math.cos(math.radians(hue))
    b = chroma * math.sin(math.radians(hue))
    l_ = (lightness + 0.3963377774 * a + 0.2158037573 * b) ** 3
    m_ = (lightness - 0.1055613458 * a - 0.0638541728 * b) ** 3
    s_ = (lightness - 0.0894841775 * a - 1.2914855480 * b) ** 3
    return (
        4.0767416621 * l_ - 3.3077115913 * m_ + 0.2309699292 * s_,
        -1.2684380046 * l_ + 2.6097574011 * m_ - 0.3413193965 * s_,
        -0.0041960863 * l_ - 0.7034186147 * m_ + 1.7076147010 * s_,
    )


def oklch(lightness: float, chroma: float, hue: float) -> RGB:
    lightness = min(max(lightness, 0.0), 1.0)
    chroma = max(chroma, 0.0)
    # Out of gamut: lower the chroma rather than clip channels, which would shift the hue.
    for _ in range(24):
        linear = _oklch_to_linear(lightness, chroma, hue)
        if all(-1e-4 <= c <= 1.0001 for c in linear):
            break
        chroma *= 0.88
    r, g, b = (_linear_to_srgb(min(max(c, 0.0), 1.0)) for c in linear)
    return (r, g, b)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


def _hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _pull_hue(base: float, towards: float, amount: float) -> float:
    delta = (towards - base + 180.0) % 360.0 - 180.0
    return (base + amount * delta) % 360.0


def palette_for(theme: Theme, rng: np.random.Generator) -> Palette:
    lighting = LIGHTINGS[theme.light]
    mods = theme.modifiers
    chroma_scale = 1.0
    if "storm" in mods:
        chroma_scale *= 0.4
    if "mist" in mods:
        chroma_scale *= 0.65
    if "snow" in mods:
        chroma_scale *= 0.7
    if "calm" in mods:
        chroma_scale *= 0.8
    if "bright" in mods:
        chroma_scale *= 1.3
    if "rain" in theme.motifs:
        chroma_scale *= 0.75
    sky_darkening = 0.78 if "storm" in mods else 1.0

    def jitter(hue: float) -> float:
        return (hue + float(rng.uniform(-7.0, 7.0))) % 360.0

    hues = theme.hues
    land_hue = jitter(hues[0] if hues else lighting.land_hue)
    sky_hint = hues[1] if len(hues) > 1 else (hues[0] if hues else None)

    def sky_colour(lch: LCH) -> RGB:
        lightness, chroma, hue = lch
        if sky_hint is not None:
            # A day sky leans to the prompt's colour, unless that would turn it green or brown.
            near = _hue_distance(hue, sky_hint) < 100.0
            hue = _pull_hue(hue, sky_hint, 0.45 if theme.light == "day" and near else 0.15)
        return oklch(lightness * sky_darkening, chroma * chroma_scale, jitter(hue))

    sky = (sky_colour(lighting.sky[0]), sky_colour(lighting.sky[1]), sky_colour(lighting.sky[2]))

    land_lightness = lighting.land_lightness + float(rng.uniform(-0.02, 0.02))
    land_chroma = 0.07 * chroma_scale
    if "snow" in mods:
        land_lightness += (0.93 - land_lightness) * 0.45
        land_chroma, land_hue = 0.035, 255.0
    if "mist" in mods:
        land_lightness += (1.0 - land_lightness) * 0.12
    land_near = oklch(land_lightness, land_chroma, land_hue)
    land_far = mix(land_near, sky[2], 0.72)

    blue_hues = [h for h in hues if 180.0 <= h <= 290.0]
    water = oklch(
        lighting.water_lightness * sky_darkening,
        0.08 * chroma_scale,
        jitter(blue_hues[0] if blue_hues else 240.0),
    )

    accent_hues: tuple[float, ...]
    if theme.light == "neon" or not hues:
        accent_hues = (335.0, 205.0, 290.0) if theme.light == "neon" else (jitter(30.0), 200.0)
    else:
        accent_hues = hues
    accent_hues = (*accent_hues, (accent_hues[0] + 150.0) % 360.0, (accent_hues[0] + 210.0) % 360)
    accent_lightness = 0.74 if lighting.is_dark else 0.80
    accents = tuple(oklch(accent_lightness, 0.2 * chroma_scale + 0.03, h) for h in accent_hues[:3])

    cloud_l, cloud_c, cloud_h = lighting.cloud
    if "storm" in mods:
        cloud_l *= 0.7
    mist = mix(sky[2], (1.0, 1.0, 1.0), 0.12 if lighting.is_dark else 0.3)

    return Palette(
        sky=sky,
        land_far=land_far,
        land_near=land_near,
        water=water,
        sun=(oklch(*lighting.sun[0]), oklch(*lighting.sun[1])),
        glow=oklch(*lighting.glow),
        accents=(accents[0], accents[1], accents[2]),
        cloud=oklch(cloud_l, cloud_c * chroma_scale, cloud_h),
        mist=mist,
        star=oklch(0.97, 0.03, 95.0),
        window=accents[1] if theme.light == "neon" else oklch(*lighting.window),
        is_dark=lighting.is_dark,
    )
