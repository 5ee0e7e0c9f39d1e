"""What the interactive views (`prefstudy.explorer`, `prefstudy.whatif`) and the notebooks share:
figures rendered to PNG display data of an `ipywidgets.Output`, messages in its place, CSS class
names, and the order and families a study's labels are listed and coloured in (`study_order`).

Figures go into Output widgets as display data, so the views need no front-end build and work
wherever ipywidgets do (JupyterLab, VS Code, Notebook 7); what a view shows stays readable from
Python (`Output.outputs`).
"""

from __future__ import annotations

import base64
import html
import io

import ipywidgets as widgets
import matplotlib.pyplot as plt

from . import theme


def display_png(fig_or_grid, name: str, dpi: int = 80) -> dict:
    """The figure (a Figure, Axes or seaborn grid) as one display_data output (image/png), and
    the figure closed."""
    figure = getattr(fig_or_grid, "figure", fig_or_grid)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                     "text/plain": f"<{name}>"}}


def message(text: str) -> dict:
    """A line of text as one display_data output (plain and HTML, escaped), shown where a
    figure cannot be drawn."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": text, "text/html": f"<p><i>{html.escape(text)}</i></p>"}}


def show(output: widgets.Output, *items: dict) -> None:
    """Replace what `output` shows with `items` (display_png / message outputs; none: empty)."""
    output.outputs = tuple(items)


def study_order(tables) -> tuple[list[str], dict[str, str] | None]:
    """The labels of a `tables.Tables` as figures list them, and label → family for
    `theme.set_style(order, families=...)`: family by family (`theme.family_order`), each family
    in the study's order, where every label's objective has a family (`tables.runs.family`);
    else the study's own order and None (colour by label)."""
    known = tables.runs.dropna(subset=["family"]).drop_duplicates("label")
    family = dict(zip(known.label, known.family))
    if not tables.labels or not set(tables.labels) <= set(family):
        return list(tables.labels), None
    families = {label: family[label] for label in tables.labels}
    return theme.family_order(families), families


def add_classes(view: widgets.DOMWidget, name: str, **parts: widgets.DOMWidget) -> None:
    """CSS classes `prefstudy-<name>` on the view and `prefstudy-<part>` on its parts, so a page
    (or a browser test) can find them."""
    view.add_class(f"prefstudy-{name}")
    for part, widget in parts.items():
        widget.add_class(f"prefstudy-{part}")


__all__ = ["add_classes", "display_png", "message", "show", "study_order"]
