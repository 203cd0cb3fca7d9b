"""Interactive figures that also work in the static book, where no Python kernel runs.

Every figure is rendered once, at build time, for every slider position. The sliders are
linked in the browser (`widgets.jslink`) to the `selected_index` of nested
`widgets.Stack`s of `widgets.Image`s, so moving a slider only shows another precomputed
picture. The widget state, images included, is saved in the executed notebook and
embedded in the built page, so the sliders keep working without a kernel. Each picture
holds twice the pixels it is shown with, so that it stays sharp on high-resolution
screens. With ipywidgets 7 (no Stack widget, e.g. Colab's default) a Python callback
swaps the image instead.
"""

import io
import struct
from typing import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def figure_to_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a matplotlib figure, which is then closed so that Jupyter does not
    show it too."""
    buffer = io.BytesIO()
    # no bbox_inches="tight": equal sizes keep the page still
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def sharp_image(png: bytes) -> widgets.Image:
    """An image widget showing `png` at half its pixel width: on a screen of two pixels
    per CSS pixel (a 2x display) every pixel of the picture is one pixel of the screen.
    """
    # the IHDR chunk, which every PNG starts with, holds the width
    width = struct.unpack(">I", png[16:20])[0]
    return widgets.Image(value=png, format="png", width=str(width // 2))


def _placeholder(message: str, figsize) -> Figure:
    fig = plt.figure(figsize=figsize)
    fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=14)
    return fig


def image_slider_explorer(
    render: Callable[[int, int], Figure],
    experts: Sequence[int],
    experts_per_token: Sequence[int],
    *,
    initial: tuple[int, int] | None = None,
    dpi: int = 80,
) -> widgets.VBox:
    """Two sliders (number of experts, experts per token k) choosing among figures
    `render(num_experts, k)`.

    `render` is called once per pair with k <= num_experts and must return a new
    matplotlib Figure of the same size every time, laid out so that its labels fit
    (layout="constrained" or subplots_adjust); pairs with k > num_experts show a note
    instead. `initial` is the (num_experts, k) pair shown first (default: the middle of
    each range). Display the returned widget as the last expression of a cell. Cost:
    len(experts) * len(experts_per_token) PNGs stored in the notebook, so keep the grid
    small (tens of images) and `dpi` modest. `dpi` is the displayed resolution (CSS
    pixels per inch); the PNGs are rendered at twice that.
    """
    experts, experts_per_token = list(experts), list(experts_per_token)
    if not experts or not experts_per_token:
        raise ValueError(
            "image_slider_explorer needs at least one value in `experts` and in "
            "`experts_per_token`"
        )
    if min(experts) < 1 or min(experts_per_token) < 1:
        raise ValueError(
            f"experts and experts_per_token must be positive integers, got {experts} "
            "and "
            f"{experts_per_token}"
        )
    if initial is None:
        initial = (
            experts[len(experts) // 2],
            experts_per_token[len(experts_per_token) // 2],
        )
    if initial[0] not in experts or initial[1] not in experts_per_token:
        raise ValueError(
            f"initial={initial} must be a pair from experts={experts} and "
            f"experts_per_token={experts_per_token}"
        )

    pngs, figsize = {}, None
    for num_experts in experts:
        for k in experts_per_token:
            if k <= num_experts:
                fig = render(num_experts, k)
                if not isinstance(fig, Figure):
                    raise ValueError(
                        f"render({num_experts}, {k}) must return a matplotlib Figure, "
                        f"got {type(fig).__name__}"
                    )
                figsize = figsize or tuple(fig.get_size_inches())
                pngs[num_experts, k] = figure_to_png(fig, 2 * dpi)
    if not pngs:
        raise ValueError(
            "no pair with experts_per_token <= number of experts in "
            f"experts={experts}, "
            f"experts_per_token={experts_per_token}"
        )
    for num_experts in experts:
        for k in experts_per_token:
            if k > num_experts:
                note = (
                    f"k = {k} > {num_experts} experts:\na token cannot choose "
                    "more experts than exist"
                )
                pngs[num_experts, k] = figure_to_png(
                    _placeholder(note, figsize), 2 * dpi
                )

    look = dict(
        style={"description_width": "170px"}, layout=widgets.Layout(width="480px")
    )
    experts_slider = widgets.SelectionSlider(
        options=experts, value=initial[0], description="number of experts", **look
    )
    per_token_slider = widgets.SelectionSlider(
        options=experts_per_token,
        value=initial[1],
        description="experts per token (k)",
        **look,
    )
    # ipywidgets 7 (Colab's default): needs the kernel to swap images
    if not hasattr(widgets, "Stack"):
        image = sharp_image(pngs[initial])

        def show(_change):
            image.value = pngs[experts_slider.value, per_token_slider.value]

        experts_slider.observe(show, "value")
        per_token_slider.observe(show, "value")
        return widgets.VBox([experts_slider, per_token_slider, image])

    rows = [
        widgets.Stack(
            [sharp_image(pngs[e, k]) for k in experts_per_token],
            selected_index=experts_per_token.index(initial[1]),
        )
        for e in experts
    ]
    grid = widgets.Stack(rows, selected_index=experts.index(initial[0]))
    # jslink, not observe: the link lives in the browser, so it also works in the static
    # book.
    widgets.jslink((experts_slider, "index"), (grid, "selected_index"))
    for row in rows:
        widgets.jslink((per_token_slider, "index"), (row, "selected_index"))
    return widgets.VBox([experts_slider, per_token_slider, grid])
