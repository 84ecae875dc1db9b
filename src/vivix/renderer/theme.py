"""Reads a prompt into a theme: the light of the scene, colour hues, modifiers and motifs.

Known words come from small tables; any other content word is hashed (blake2b, stable across
processes, unlike `hash()`) into a hue and a motif, so every prompt gets its own look.
Words of the negative prompt take their motifs, hues and moods out of the theme.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TypeVar

V = TypeVar("V")


def _by_word(groups: dict[str, V]) -> dict[str, V]:
    """{"forest woods": x} -> {"forest": x, "woods": x}"""
    return {word: value for words, value in groups.items() for word in words.split()}


# Back-to-front painting order of the motifs that shape the ground.
TERRAIN = ("mountains", "hills", "forest", "city", "water", "grid")
SKY = ("stars", "aurora", "spiral", "stripes", "rays", "clouds")
AIR = ("bubbles", "mist", "snow", "rain")
MOTIFS = TERRAIN + SKY + AIR

# Light of the scene, strongest first: "neon city at night" is lit as neon.
LIGHTS = ("neon", "night", "dusk", "dawn", "day")

_MOTIF_GROUPS = _by_word(
    {
        "mountain peak alps alpine summit cliff ridge canyon volcano himalaya range": "mountains",
        "hill dune desert valley meadow field countryside prairie savanna plain": "hills",
        "forest wood woods tree pine jungle grove taiga woodland": "forest",
        "city street tokyo skyline town urban building tower downtown metropolis cyberpunk "
        "village rooftop": "city",
        "ocean sea lake river beach coast shore bay wave water lagoon pond": "water",
        "harbour harbor port marina pier": ("water", "city"),
        "island": ("water", "hills"),
        "fjord": ("water", "mountains"),
        "grid synthwave retro vaporwave outrun tron arcade digital": "grid",
        "star starry night space cosmic sparkle constellation nebula midnight": "stars",
        "galaxy": ("stars", "spiral"),
        "aurora borealis northern": "aurora",
        "spiral swirl vortex whirl hypnotic spin cyclone tornado": "spiral",
        "stripe striped lines zebra pattern geometric": "stripes",
        "ray rays beam sunbeam light cathedral god": "rays",
        "cloud cloudy heaven overcast": "clouds",
        "bubble circle dot bokeh orb balloon underwater champagne soap polka lantern firefly "
        "fireflies": "bubbles",
        "mist misty fog foggy haze hazy smoke steam": "mist",
        "snow snowy snowfall blizzard winter snowflake": "snow",
        "rain rainy drizzle storm stormy downpour shower": "rain",
    }
)
MOTIF_WORDS: dict[str, tuple[str, ...]] = {
    word: (motifs,) if isinstance(motifs, str) else tuple(motifs)
    for word, motifs in _MOTIF_GROUPS.items()
}

# Hue angles in OKLCH degrees (red ≈ 29, yellow ≈ 100, green ≈ 142, blue ≈ 264).
HUE_WORDS = _by_word(
    {
        "red crimson scarlet ruby blood": (27.0,),
        "rose cherry blossom sakura": (5.0,),
        "pink flamingo": (355.0,),
        "magenta fuchsia": (330.0,),
        "orange autumn fire flame lava ember copper rust tangerine": (50.0,),
        "gold golden amber honey sand desert dune wheat": (80.0,),
        "yellow lemon sunflower banana": (100.0,),
        "lime spring olive": (125.0,),
        "green forest jungle leaf leaves moss grass meadow garden tree pine": (145.0,),
        "emerald mint jade": (160.0,),
        "teal turquoise lagoon aqua tropical": (190.0,),
        "cyan ice frozen glacier arctic": (215.0,),
        "blue ocean sea water lake river harbour harbor bay rain sky": (245.0,),
        "navy sapphire cobalt indigo deep": (268.0,),
        "purple violet lavender amethyst plum galaxy nebula cosmic": (305.0,),
        "neon cyberpunk": (335.0, 205.0),
        "synthwave": (335.0, 290.0),
        "vaporwave": (345.0, 200.0),
    }
)

LIGHT_WORDS = _by_word(
    {
        "neon cyberpunk synthwave vaporwave outrun cyber glow": "neon",
        "night midnight dark noir moon moonlight moonlit space star starry galaxy nebula aurora "
        "borealis": "night",
        "sunset dusk twilight evening": "dusk",
        "dawn sunrise morning daybreak": "dawn",
        "day noon daylight sunny afternoon": "day",
    }
)

MODIFIER_WORDS = _by_word(
    {
        "snow snowy winter ice icy frost frozen arctic blizzard": "snow",
        "mist misty fog foggy haze hazy smoke": "mist",
        "storm stormy thunder gloomy moody rainy grey gray": "storm",
        "calm serene quiet peaceful soft gentle pastel dream dreamy ambient": "calm",
        "vivid bright summer happy joy colorful colourful": "bright",
    }
)

# Words that say nothing about the look; they must not be hashed into motifs either.
STOP_WORDS = frozenset(
    _by_word(
        {
            "a an the of in on at to and or with without for from by over under into onto near "
            "is are be it its this that these those very some lit style cinematic photo shot "
            "high quality detailed ultra realistic render image picture video sound music": 0
        }
    )
)


@dataclass(frozen=True, slots=True)
class Theme:
    light: str
    modifiers: frozenset[str]
    hues: tuple[float, ...]  # in order of appearance; empty means "use the light's own"
    motifs: tuple[str, ...]  # in painting order
    digest: int  # stable fingerprint of both prompts, mixed into every seed


def words_of(text: str) -> list[str]:
    return [w for w in re.findall(r"[^\W\d_]+", text.lower()) if w not in STOP_WORDS]


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _lookup(table: dict[str, V], word: str) -> V | None:
    if word in table:
        return table[word]
    # Cheap plural folding: "mountains", "bubbles", "cities", "leaves" already listed.
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in table:
            return table[word[: -len(suffix)] + replacement]
    return None


def _is_known(word: str) -> bool:
    return (
        _lookup(MOTIF_WORDS, word) is not None
        or _lookup(HUE_WORDS, word) is not None
        or _lookup(LIGHT_WORDS, word) is not None
        or _lookup(MODIFIER_WORDS, word) is not None
    )


def _hue_distance(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def read_theme(prompt: str, negative_prompt: str | None = None) -> Theme:
    words = words_of(prompt)
    banned = words_of(negative_prompt or "")
    digest = stable_hash(prompt.strip().lower() + "\x00" + (negative_prompt or "").strip().lower())

    banned_motifs = {m for w in banned for m in _lookup(MOTIF_WORDS, w) or ()}
    banned_lights = {m for w in banned if (m := _lookup(LIGHT_WORDS, w))}
    banned_modifiers = {m for w in banned if (m := _lookup(MODIFIER_WORDS, w))}
    banned_hues = [h for w in banned for h in (_lookup(HUE_WORDS, w) or ())]

    motifs: list[str] = []
    hues: list[float] = []
    lights: set[str] = set()
    modifiers: set[str] = set()
    unknown: list[str] = []
    for word in words:
        for motif in _lookup(MOTIF_WORDS, word) or ():
            if motif not in banned_motifs and motif not in motifs:
                motifs.append(motif)
        for hue in _lookup(HUE_WORDS, word) or ():
            if hue not in hues and all(_hue_distance(hue, b) > 25.0 for b in banned_hues):
                hues.append(hue)
        light = _lookup(LIGHT_WORDS, word)
        if light and light not in banned_lights:
            lights.add(light)
        modifier = _lookup(MODIFIER_WORDS, word)
        if modifier and modifier not in banned_modifiers:
            modifiers.add(modifier)
        if not _is_known(word) and word not in banned and len(word) > 2:
            unknown.append(word)

    # Unknown words still shape the picture, through their stable hashes.
    word_hashes = [stable_hash(w) for w in dict.fromkeys(unknown)]
    if not hues:
        hues = [
            float(h % 360)
            for h in word_hashes[:2]
            if all(_hue_distance(h % 360, b) > 25.0 for b in banned_hues)
        ]
    allowed = [m for m in MOTIFS if m not in banned_motifs]
    for h in [*word_hashes, digest, digest >> 20]:
        if len(motifs) >= 2 or not allowed:
            break
        candidate = allowed[(h >> 12) % len(allowed)]
        if candidate not in motifs:
            motifs.append(candidate)

    if lights:
        light = next(name for name in LIGHTS if name in lights)
    elif not words or len(unknown) == len(words):
        # A prompt of only unknown words gets its time of day from its hash too.
        light = ("day", "day", "dawn", "dusk", "night")[digest % 5]
        light = light if light not in banned_lights else "day"
    else:
        light = "day"

    order = {name: i for i, name in enumerate(MOTIFS)}
    return Theme(
        light=light,
        modifiers=frozenset(modifiers),
        hues=tuple(hues[:3]),
        motifs=tuple(sorted(motifs, key=order.__getitem__)),
        digest=digest,
    )
