"""Route options and the canonical param → upstream input mapping shared by the fal and
Replicate adapters (vivix.providers.route_options)."""

from __future__ import annotations

from typing import Any

import pytest

from vivix.providers.base import ProviderFatalError, ReferenceImage, RenderRequest
from vivix.providers.route_options import (
    IMAGE_SIZE,
    IMAGE_SIZE_ENUM,
    WIDTH_HEIGHT,
    InputConventions,
    build_input,
    option_choice,
    option_string_list,
    option_string_map,
    option_table,
    pixel_size,
)

ACME = InputConventions(
    provider="acme",
    fields={
        "prompt": "prompt",
        "seed": "seed",
        "duration": "duration",
        "audio": "with_audio",
        "aspect_ratio": "aspect_ratio",
        "resolution": "resolution",
    },
    reference_fields={"image": "image_urls", "video": "first_frame"},
    size_modes=frozenset({WIDTH_HEIGHT, IMAGE_SIZE, IMAGE_SIZE_ENUM}),
    size_presets={"1:1": "square", "16:9": "wide"},
)


def request(
    category: str = "image",
    options: dict[str, Any] | None = None,
    references: list[ReferenceImage] | None = None,
    **params: Any,
) -> RenderRequest:
    return RenderRequest(
        generation_id="gen_1",
        model="some-model",
        category=category,
        upstream_model="acme/model",
        params={"prompt": "a teapot", **params},
        options=options or {},
        reference_images=references or [],
    )


def test_params_go_under_the_providers_field_names_and_unknown_ones_stay_home() -> None:
    body = build_input(request(seed=7, audio=True, style="noir", duration=None), ACME)

    assert body == {"prompt": "a teapot", "seed": 7, "with_audio": True}


def test_the_route_renames_and_drops_fields() -> None:
    options = {"fields": {"seed": "random_seed", "audio": False, "prompt": ""}}

    assert build_input(request(options=options, seed=7, audio=True), ACME) == {"random_seed": 7}


def test_listed_values_are_translated_by_their_text_and_others_pass_unchanged() -> None:
    options = {"values": {"duration": {"5": "5s"}, "audio": {"true": "on"}, "seed": {"1": 2}}}

    body = build_input(request("video", options, duration=5, audio=True, seed=9), ACME)

    assert (body["duration"], body["with_audio"], body["seed"]) == ("5s", "on", 9)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (WIDTH_HEIGHT, {"width": 2048, "height": 1152}),
        (IMAGE_SIZE, {"image_size": {"width": 2048, "height": 1152}}),
        (IMAGE_SIZE_ENUM, {"image_size": "wide"}),
    ],
)
def test_size_modes_replace_aspect_ratio_and_resolution(
    mode: str, expected: dict[str, Any]
) -> None:
    body = build_input(request(options={"size": mode}, aspect_ratio="16:9", resolution="2K"), ACME)

    assert body == {"prompt": "a teapot", **expected}


def test_a_size_preset_the_provider_lacks_falls_back_to_its_square_one() -> None:
    body = build_input(request(options={"size": IMAGE_SIZE_ENUM}, aspect_ratio="4:5"), ACME)

    assert body["image_size"] == "square"


def test_video_without_an_aspect_ratio_is_sized_as_16_9() -> None:
    body = build_input(request("video", {"size": WIDTH_HEIGHT}, resolution="1080p"), ACME)

    assert (body["width"], body["height"]) == (1920, 1080)


def test_a_size_mode_the_provider_does_not_support_is_a_misconfigured_route() -> None:
    narrow = InputConventions("acme", {}, {}, frozenset({WIDTH_HEIGHT}))

    with pytest.raises(ProviderFatalError, match="acme route option size='image_size'"):
        build_input(request(options={"size": IMAGE_SIZE}), narrow)


def test_reference_images_go_as_a_list_for_images_and_the_first_one_for_video() -> None:
    urls = ["https://img.example/a.png", "https://img.example/b.png"]

    image = build_input(request(reference_images=urls), ACME)
    video = build_input(request("video", reference_images=urls), ACME)

    assert image["image_urls"] == urls
    assert video["first_frame"] == urls[0]
    assert "reference_images" not in image


def test_fetched_reference_images_are_used_when_params_have_none() -> None:
    references = [ReferenceImage("https://img.example/a.png", data=b"png")]

    body = build_input(request(references=references), ACME)

    assert body["image_urls"] == ["https://img.example/a.png"]


def test_the_route_chooses_the_reference_field_and_mode() -> None:
    options = {"fields": {"reference_images": "init_image"}, "reference_images": "first"}

    body = build_input(request(options=options, reference_images=["https://a", "https://b"]), ACME)

    assert body["init_image"] == "https://a"


def test_an_unknown_reference_mode_is_a_misconfigured_route() -> None:
    with pytest.raises(ProviderFatalError, match="reference_images='all'"):
        build_input(
            request(options={"reference_images": "all"}, reference_images=["https://a"]), ACME
        )


def test_fixed_input_fields_are_merged_last_and_win() -> None:
    options = {"input": {"seed": 1, "enable_safety_checker": True}}

    assert build_input(request(options=options, seed=7), ACME) == {
        "prompt": "a teapot",
        "seed": 1,
        "enable_safety_checker": True,
    }


@pytest.mark.parametrize(
    ("category", "aspect", "resolution", "size"),
    [
        ("image", "1:1", "1K", (1024, 1024)),
        ("image", "16:9", "2K", (2048, 1152)),
        ("image", "4:5", "1K", (816, 1024)),
        ("image", "9:16", "4K", (2304, 4096)),
        ("image", "7:3", None, (1024, 1024)),  # unknown: square at the default size
        ("video", "16:9", "720p", (1280, 720)),
        ("video", "9:16", "1080p", (1080, 1920)),
        ("video", "1:1", "2160p", (2160, 2160)),
    ],
)
def test_pixel_sizes_are_multiples_of_8_from_the_long_or_short_side(
    category: str, aspect: str, resolution: str | None, size: tuple[int, int]
) -> None:
    assert pixel_size(category, aspect, resolution) == size


@pytest.mark.parametrize(
    ("read", "options", "message"),
    [
        (lambda o: option_table(o, "input"), {"input": ["x"]}, "input must be a table"),
        (
            lambda o: option_choice(o, "mode", ("a", "b"), "a"),
            {"mode": "c"},
            "mode must be one of a, b",
        ),
        (lambda o: option_string_map(o, "m"), {"m": {"a": 1}}, "m must map strings"),
        (lambda o: option_string_list(o, "p"), {"p": "seed"}, "p must be a list"),
    ],
)
def test_bad_option_values_are_a_misconfigured_route(
    read: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ProviderFatalError, match=message):
        read(options)


def test_absent_options_read_as_their_defaults() -> None:
    assert option_table({}, "input") == {}
    assert option_choice({}, "mode", ("a", "b"), "b") == "b"
    assert option_string_map({}, "m") == {}
    assert option_string_list({}, "p") == ()
