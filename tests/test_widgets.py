"""qwen_minimal.book.widgets: the slider explorer that also works in the static book
(tests/browser moves it)."""

import io

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
from PIL import Image

from qwen_minimal.book.widgets import image_slider_explorer, two_slider_explorer

calls = []


def png_width(png: bytes) -> int:
    return Image.open(io.BytesIO(png)).size[0]


def render(num_experts, k):
    calls.append((num_experts, k))
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(range(num_experts), [k] * num_experts)
    ax.set_title(f"E={num_experts} k={k}")
    return fig


def test_every_pair_is_precomputed_and_linked_in_the_browser(monkeypatch):
    calls.clear()
    linked = set()
    real_jslink = widgets.jslink

    def recording_jslink(source, target):
        linked.add((source[0].model_id, source[1], target[0].model_id, target[1]))
        return real_jslink(source, target)

    monkeypatch.setattr(widgets, "jslink", recording_jslink)
    box = image_slider_explorer(
        render, experts=[2, 4], experts_per_token=[1, 2, 3], initial=(4, 2)
    )
    experts_slider, per_token_slider, grid = box.children
    # (2, 3) is impossible: no render
    assert sorted(calls) == [
        (2, 1),
        (2, 2),
        (4, 1),
        (4, 2),
        (4, 3),
    ]
    assert (experts_slider.value, per_token_slider.value) == (4, 2)
    assert grid.selected_index == 1 and all(
        row.selected_index == 1 for row in grid.children
    )
    pngs = [bytes(image.value) for row in grid.children for image in row.children]
    assert len(pngs) == 6 and all(png.startswith(b"\x89PNG") for png in pngs)
    assert len(set(pngs)) == 6, "every slider position must show its own picture"
    # Sharp on a 2x display: each picture is shown at half its pixel width (a 3-inch
    # figure at 80 dpi).
    assert all(
        int(image.width) == 3 * 80 and png_width(bytes(image.value)) == 2 * 3 * 80
        for row in grid.children
        for image in row.children
    )
    # The sliders drive the stacks through browser-side links (jslink), which keep
    # working without a kernel.
    assert (experts_slider.model_id, "index", grid.model_id, "selected_index") in linked
    assert all(
        (per_token_slider.model_id, "index", row.model_id, "selected_index") in linked
        for row in grid.children
    )


def test_without_stack_widget_images_are_swapped_from_python(monkeypatch):
    monkeypatch.delattr(widgets, "Stack")  # ipywidgets 7, as in Colab
    box = image_slider_explorer(render, experts=[2, 4], experts_per_token=[1, 2])
    experts_slider, per_token_slider, image = box.children
    shown = [bytes(image.value)]  # (4, 2), the middle of each range
    per_token_slider.value = 1
    shown.append(bytes(image.value))  # (4, 1)
    experts_slider.value = 2
    shown.append(bytes(image.value))  # (2, 1)
    assert all(png.startswith(b"\x89PNG") for png in shown) and len(set(shown)) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(experts=[], experts_per_token=[1]), "at least one value"),
        (dict(experts=[0, 2], experts_per_token=[1]), "positive integers"),
        (
            dict(experts=[2], experts_per_token=[3]),
            "no pair with experts_per_token <= number of experts",
        ),
        (dict(experts=[2, 4], experts_per_token=[1], initial=(3, 1)), "initial=(3, 1)"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        image_slider_explorer(render, **kwargs)


def test_render_must_return_a_figure():
    with pytest.raises(ValueError, match="must return a matplotlib Figure"):
        image_slider_explorer(lambda e, k: None, experts=[2], experts_per_token=[1])


def test_two_named_sliders_show_the_value_and_pass_the_argument():
    seen = []

    def draw(context, fraction):
        seen.append((context, fraction))
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.set_title(f"{context} {fraction}")
        return fig

    box = two_slider_explorer(
        draw,
        {"4k": 4096, "256k": 262_144},
        [0.25, 1.0],
        labels=("context length", "full-attention layers"),
        initial=("256k", 0.25),
    )
    x_slider, y_slider, grid = box.children
    assert sorted(seen) == [(4096, 0.25), (4096, 1.0), (262_144, 0.25), (262_144, 1.0)]
    assert (x_slider.description, y_slider.description) == (
        "context length",
        "full-attention layers",
    )
    assert x_slider.options == ("4k", "256k") and x_slider.value == "256k"
    assert grid.selected_index == 1 and grid.children[1].selected_index == 0
    with pytest.raises(ValueError, match="initial"):
        two_slider_explorer(draw, [1], [2], labels=("a", "b"), initial=(3, 2))
