"""A small music-box synth: a melody over a chord progression, with the key, scale and tempo
read from the prompt's theme and the notes drawn from the seed.

Voices are sums of sines and triangles with envelopes, computed per note with NumPy (no
per-sample Python); the mix is normalized to -1 dBFS so it never clips.
"""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np
from numpy.typing import NDArray

from vivix.renderer import RenderCanceled
from vivix.renderer.theme import Theme

SAMPLE_RATE = 44_100
F32 = NDArray[np.float32]

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
DORIAN = (0, 2, 3, 5, 7, 9, 10)
LYDIAN = (0, 2, 4, 6, 7, 9, 11)
# Chord roots as degrees of the seven-note scale, one chord per bar.
PROGRESSIONS = ((0, 5, 3, 4), (0, 3, 4, 0), (0, 4, 5, 3), (5, 3, 0, 4), (0, 2, 3, 4))


@dataclass(frozen=True, slots=True)
class Music:
    root: int  # MIDI note of the tonic, around the 4th octave
    harmony: tuple[int, ...]  # seven-note scale the chords come from
    melody: tuple[int, ...]  # notes the melody may use (a subset, e.g. a pentatonic)
    bpm: float
    ambience: str | None  # "rain", "waves" or None


def music_for(theme: Theme) -> Music:
    light, mods = theme.light, theme.modifiers
    harmony, bpm = {
        "neon": (MINOR, 116.0),
        "night": (DORIAN, 76.0),
        "dusk": (DORIAN, 86.0),
        "dawn": (LYDIAN, 92.0),
        "day": (MAJOR, 104.0),
    }[light]
    if "storm" in mods:
        harmony = MINOR
    if "bright" in mods:
        harmony, bpm = MAJOR, bpm * 1.1
    if "calm" in mods or "mist" in mods:
        bpm *= 0.8
    # Pentatonic melodies sound calm over any chord of their parent scale.
    melody: tuple[int, ...]
    if harmony in (MINOR, DORIAN):
        melody = (0, 3, 5, 7, 10)
    elif "calm" in mods or "snow" in mods:
        melody = (0, 2, 4, 7, 9)
    else:
        melody = harmony
    ambience = "rain" if "rain" in theme.motifs else "waves" if "water" in theme.motifs else None
    return Music(
        root=57 + theme.digest % 12, harmony=harmony, melody=melody, bpm=bpm, ambience=ambience
    )


def _hz(note: float) -> float:
    return 440.0 * math.pow(2.0, (note - 69.0) / 12.0)


def _pluck(note: int, seconds: float) -> F32:
    """One music-box note: a bright attack that decays into a pure tone."""
    t = np.arange(int(seconds * SAMPLE_RATE), dtype=np.float64) / SAMPLE_RATE
    f = _hz(note)
    w = 2.0 * np.pi * f * t
    tone = np.sin(w) + 0.3 * np.sin(2.0 * w) * np.exp(-t / 0.25)
    tone += 0.12 * np.sin(4.2 * w) * np.exp(-t / 0.08)  # inharmonic tine
    envelope = (1.0 - np.exp(-t / 0.003)) * np.exp(-t / 0.75)
    return (tone * envelope).astype(np.float32)


def _triangle(freq: float, t: NDArray[np.float64]) -> NDArray[np.float64]:
    phase = (freq * t) % 1.0
    return 4.0 * np.abs(phase - 0.5) - 1.0


def _scale_note(scale: tuple[int, ...], root: int, index: int) -> int:
    octave, degree = divmod(index, len(scale))
    return root + 12 * octave + scale[degree]


def _phrase(
    rng: np.random.Generator, music: Music, chords: list[tuple[int, ...]]
) -> list[tuple[int, int, float]]:
    """Two bars of eighth notes: (step, MIDI note, velocity)."""
    notes: list[tuple[int, int, float]] = []
    index = len(music.melody) + int(rng.integers(0, len(music.melody)))
    for step in range(16):
        strong = step % 4 == 0
        if not strong and rng.random() > 0.5:
            continue
        index += int(rng.choice([-2, -1, -1, 0, 1, 1, 2]))
        index = min(max(index, len(music.melody) - 2), 3 * len(music.melody))
        note = _scale_note(music.melody, music.root, index)
        if strong:
            # Land on the nearest tone of the bar's chord.
            chord = chords[step // 8]
            candidates = [c + 12 * k for c in chord for k in range(0, 4)]
            note = min(candidates, key=lambda c: (abs(c - note), c))
        notes.append((step, note, 0.75 if strong else 0.5 + 0.2 * float(rng.random())))
    return notes


def synthesize(
    theme: Theme,
    *,
    duration_s: float,
    entropy: list[int],
    should_stop: Callable[[], bool] | None = None,
) -> F32:
    """Stereo float32 samples, shape (2, duration_s * SAMPLE_RATE), peak at -1 dBFS."""
    music = music_for(theme)
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    bpm = music.bpm + float(rng.uniform(-4.0, 4.0))
    step_s = 30.0 / bpm  # eighth notes
    bar_s = 8 * step_s
    n = round(duration_s * SAMPLE_RATE)
    mix = np.zeros((2, n + SAMPLE_RATE * 4), np.float32)  # room for ringing tails
    t_all = np.arange(mix.shape[1], dtype=np.float64) / SAMPLE_RATE

    progression = PROGRESSIONS[int(rng.integers(0, len(PROGRESSIONS)))]
    harmony = music.harmony

    def chord(degree: int) -> tuple[int, ...]:
        return tuple(_scale_note(harmony, 0, degree + 2 * k) % 12 + music.root for k in range(3))

    bars = math.ceil(duration_s / bar_s) + 1
    chords = [chord(progression[b % len(progression)]) for b in range(bars + 1)]
    phrases: dict[str, list[tuple[int, int, float]]] = {}
    plucks: dict[int, F32] = {}
    form = "AABA"
    for pair in range(0, bars, 2):
        if should_stop is not None and should_stop():
            raise RenderCanceled
        start = pair * bar_s
        # Pad and bass: one chord per bar.
        for b in (pair, pair + 1):
            s0 = round(b * bar_s * SAMPLE_RATE)
            s1 = min(mix.shape[1], round((b + 1.6) * bar_s * SAMPLE_RATE))
            if s0 >= n:
                break
            t = t_all[: s1 - s0]
            swell = np.minimum(t / 0.35, 1.0) * np.exp(-t / (bar_s * 0.9))
            for i, note in enumerate(chords[b]):
                f = _hz(note - 12)
                mix[0, s0:s1] += (0.05 * swell * _triangle(f, t)).astype(np.float32)
                mix[1, s0:s1] += (0.05 * swell * _triangle(f * 1.0015 + 0.1 * i, t)).astype(
                    np.float32
                )
            bass = 0.22 * np.sin(2 * np.pi * _hz(chords[b][0] - 24) * t) * np.exp(-t / 1.1)
            bass *= np.minimum(t / 0.01, 1.0)
            mix[:, s0:s1] += bass.astype(np.float32)
        # Melody: phrase A repeats (slightly varied), B answers it.
        name = form[(pair // 2) % len(form)]
        if name not in phrases or rng.random() < 0.3:
            phrases[name] = _phrase(rng, music, chords[pair : pair + 2])
        for step, note, velocity in phrases[name]:
            s0 = round((start + step * step_s) * SAMPLE_RATE)
            if s0 >= n:
                break
            if note not in plucks:
                plucks[note] = _pluck(note, 3.0)
            tone = plucks[note][: mix.shape[1] - s0] * np.float32(velocity * 0.4)
            pan = 0.5 + 0.35 * math.sin(note * 1.7)
            mix[0, s0 : s0 + tone.shape[0]] += tone * np.float32(math.cos(pan * math.pi / 2))
            mix[1, s0 : s0 + tone.shape[0]] += tone * np.float32(math.sin(pan * math.pi / 2))

    out = mix[:, :n]
    if music.ambience is not None:
        out += _ambience(music.ambience, rng, n)
    fade_in = np.minimum(np.arange(n, dtype=np.float32) / (0.02 * SAMPLE_RATE), 1.0)
    fade_s = min(1.0, duration_s * 0.15)
    fade_out = np.minimum((n - np.arange(n, dtype=np.float32)) / (fade_s * SAMPLE_RATE), 1.0)
    out *= fade_in * fade_out
    peak = float(np.abs(out).max())
    if peak > 0:
        out *= np.float32(0.89 / peak)
    return np.ascontiguousarray(out)


def _ambience(kind: str, rng: np.random.Generator, n: int) -> F32:
    noise = rng.standard_normal((2, n + 256)).astype(np.float32)
    t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
    if kind == "rain":
        # Box-filtered noise is a soft hiss; a slow random swell keeps it alive.
        kernel = np.ones(6, np.float32) / 6
        level = 0.035 * (0.8 + 0.2 * np.sin(2 * np.pi * t / 5.3))
    else:
        kernel = np.ones(96, np.float32) / 96
        level = 0.12 * (0.25 + 0.75 * np.sin(np.pi * t / 6.0 + 0.5) ** 2)
    filtered = np.stack([np.convolve(ch, kernel, mode="valid")[:n] for ch in noise])
    return (filtered * level).astype(np.float32)


def encode_wav(samples: F32) -> bytes:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(samples.shape[0])
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.T.tobytes())
    return buffer.getvalue()


def audio_frames(samples: F32, start: int, stop: int, chunk: int = 4096) -> Iterator[av.AudioFrame]:
    for s0 in range(start, stop, chunk):
        s1 = min(stop, s0 + chunk)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, s0:s1]), format="fltp", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = s0
        yield frame


def encode_mp3(samples: F32) -> bytes:
    buffer = io.BytesIO()
    # bitexact: no encoder version strings, so the bytes depend only on the samples.
    with av.open(buffer, "w", format="mp3", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="stereo")
        stream.bit_rate = 192_000
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for frame in audio_frames(samples, 0, samples.shape[1]):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()
