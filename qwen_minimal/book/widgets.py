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
from typing import Callable, Mapping, Sequence

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

    return _slider_pair(
        pngs,
        experts,
        experts_per_token,
        ("number of experts", "experts per token (k)"),
        initial,
    )


def two_slider_explorer(
    render: Callable[[object, object], Figure],
    xs: Mapping | Sequence,
    ys: Mapping | Sequence,
    *,
    labels: tuple[str, str],
    initial: tuple | None = None,
    dpi: int = 80,
) -> widgets.VBox:
    """Two sliders, labelled `labels`, choosing among figures `render(x, y)`.

    xs and ys are the sliders' positions: a sequence of values, or a mapping from what
    the slider shows to the value `render` gets (e.g. {"256k": 262_144}). `initial` is
    the pair of positions shown first (default: the middle of each). Every figure is
    drawn now, as in image_slider_explorer, so keep the grid small."""
    xs, ys = (
        dict(v) if isinstance(v, Mapping) else {x: x for x in v} for v in (xs, ys)
    )
    if not xs or not ys:
        raise ValueError("two_slider_explorer needs at least one value per slider")
    if initial is None:
        initial = (list(xs)[len(xs) // 2], list(ys)[len(ys) // 2])
    if initial[0] not in xs or initial[1] not in ys:
        raise ValueError(
            f"initial={initial} must be a pair from {list(xs)}, {list(ys)}"
        )
    pngs = {}
    for x, x_value in xs.items():
        for y, y_value in ys.items():
            fig = render(x_value, y_value)
            if not isinstance(fig, Figure):
                raise ValueError(
                    f"render({x_value!r}, {y_value!r}) must return a matplotlib "
                    f"Figure, got {type(fig).__name__}"
                )
            pngs[x, y] = figure_to_png(fig, 2 * dpi)
    return _slider_pair(pngs, list(xs), list(ys), labels, initial)


def _slider_pair(pngs: dict, xs: list, ys: list, labels, initial) -> widgets.VBox:
    """The widget: a slider over xs, one over ys, and the picture pngs[x, y]."""
    look = dict(
        style={"description_width": "170px"}, layout=widgets.Layout(width="480px")
    )
    x_slider = widgets.SelectionSlider(
        options=xs, value=initial[0], description=labels[0], **look
    )
    y_slider = widgets.SelectionSlider(
        options=ys, value=initial[1], description=labels[1], **look
    )
    # ipywidgets 7 (Colab's default): needs the kernel to swap images
    if not hasattr(widgets, "Stack"):
        image = sharp_image(pngs[initial])

        def show(_change):
            image.value = pngs[x_slider.value, y_slider.value]

        x_slider.observe(show, "value")
        y_slider.observe(show, "value")
        return widgets.VBox([x_slider, y_slider, image])
    rows = [
        widgets.Stack(
            [sharp_image(pngs[x, y]) for y in ys], selected_index=ys.index(initial[1])
        )
        for x in xs
    ]
    grid = widgets.Stack(rows, selected_index=xs.index(initial[0]))
    # jslink, not observe: the link lives in the browser, so it also works in the static
    # book.
    widgets.jslink((x_slider, "index"), (grid, "selected_index"))
    for row in rows:
        widgets.jslink((y_slider, "index"), (row, "selected_index"))
    return widgets.VBox([x_slider, y_slider, grid])
