"""One look for every figure: fixed font, Okabe-Ito colours, deterministic files.

`figure()` makes a bare Figure (no pyplot, no global state; it renders with
Agg) with the report's rcParams (DejaVu Sans, which
matplotlib bundles, so no system font can change a glyph); `save()` writes it
as PNG and SVG with no date, no software tag and a fixed SVG id salt, so a run
folder renders to the same files each time on one matplotlib version.
Colours are Okabe & Ito's palette (safe for the common colour-vision
deficiencies); heatmaps use viridis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
from cycler import cycler
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Okabe, M. and Ito, K. (2008) "Color Universal Design".
BLACK = "#000000"
ORANGE = "#E69F00"
SKY = "#56B4E9"
GREEN = "#009E73"
YELLOW = "#F0E442"
BLUE = "#0072B2"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#999999"
LIGHT_GREY = "#DDDDDD"
CYCLE = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK)

# QEMU job statuses (qapi/job.json JobStatus) -> band colour.
STATUS_COLORS = {
    "undefined": LIGHT_GREY,
    "created": LIGHT_GREY,
    "running": BLUE,
    "paused": YELLOW,
    "ready": GREEN,
    "standby": SKY,
    "waiting": ORANGE,
    "pending": PURPLE,
    "aborting": VERMILLION,
    "concluded": GREY,
    "null": "#FFFFFF",
}
# Job kinds (qapi/job.json JobType) -> colour of their guest-latency points and curves.
KIND_COLORS = {"backup": VERMILLION, "mirror": BLUE, "commit": PURPLE, "stream": GREEN}
HEATMAP_CMAP = "viridis"
DPI = 110

RC: dict[Any, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.prop_cycle": cycler(color=list(CYCLE)),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "svg.hashsalt": "blocksim",
    "svg.fonttype": "path",
    "path.simplify": True,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}
PAD_IN = 0.1  # white margin around a figure's tight box, in inches
PNG_METADATA: dict[str, Any] = {"Software": None}
SVG_METADATA: dict[str, Any] = {"Date": None, "Creator": None}


def figure(width_in: float, height_in: float, **kwargs: Any) -> Figure:
    """A new figure in the report's style (the caller lays out its axes)."""
    with matplotlib.rc_context(RC):
        return Figure(figsize=(width_in, height_in), **kwargs)


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `stem`.png and `stem`.svg under out_dir; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    with matplotlib.rc_context(RC):
        # one tight box for both files ("tight" would draw the figure once more per file)
        renderer = FigureCanvasAgg(fig).get_renderer()  # type: ignore[no-untyped-call]
        box = fig.get_tightbbox(renderer).padded(PAD_IN)
        fig.savefig(png, format="png", metadata=PNG_METADATA, bbox_inches=box)
        fig.savefig(svg, format="svg", metadata=SVG_METADATA, bbox_inches=box)
    return [png, svg]


def styled(fn: Any) -> Any:
    """Run a drawing function inside the report's rcParams (ticks, fonts, cycle)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def num(value: float) -> str:
    """A figure for a caption or a label: three significant digits, never in exponent
    notation (1,415 rather than 1.41e+03; 0.0066 stays 0.0066)."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value == 0 or abs(value) >= 1e-4 else f"{value:.2e}"


def time_unit(span_ns: float) -> tuple[str, float]:
    """A readable unit for a simulated-time axis spanning `span_ns`: (name, ns per unit)."""
    if span_ns >= 2e9:
        return "s", 1e9
    if span_ns >= 2e6:
        return "ms", 1e6
    return "µs", 1e3


def size_unit(max_bytes: float) -> tuple[str, float]:
    """A readable binary unit for byte counts up to `max_bytes`."""
    for name, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if max_bytes >= 2 * scale:
            return name, float(scale)
    return "bytes", 1.0


def shorten(text: str, limit: int = 48) -> str:
    """A tick label that fits: the text, cut with an ellipsis past `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def kind_color(label: str, index: int) -> str:
    """The colour of a job kind ("backup"), a kind set ("backup + mirror") or "no job"."""
    kinds = [k.strip() for k in label.replace(" running", "").split("+")]
    if len(kinds) == 1 and kinds[0] in KIND_COLORS:
        return KIND_COLORS[kinds[0]]
    if label == "no job":
        return GREY
    return (ORANGE, SKY, BLACK, YELLOW)[index % 4]


def colormap(name: str) -> Any:
    """A registered colormap whose missing values (NaN: never seen) are a pale grey."""
    return matplotlib.colormaps[name].with_extremes(bad="#F2F2F2")
