"""Draw :class:`~napari_medai._qt.plot.LivePlot` frames with matplotlib, in a helper process.

Why a process and not a thread: matplotlib draws in Python and in Agg's C++,
both holding the GIL, for 70-150 ms a frame on an idle 2-core CPU and several
times that on a busy one; from a helper thread this stalled napari's event
loop 50-70 ms at every frame (issue 11, item 10). A child process has its own
GIL. It is started once per napari session (``python -m`` this module, so it
never re-runs the user's script as multiprocessing's spawn would), reads one
JSON scene per line on stdin and answers with a JSON header line plus the raw
RGBA bytes on stdout. It imports neither Qt nor napari, and exits when its
stdin closes, i.e. with napari.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, NamedTuple

DPI = 100.0
#: Margins around the axes in logical pixels: room for tick and axis labels.
_MARGIN_LEFT, _MARGIN_RIGHT_AXIS, _MARGIN_RIGHT, _MARGIN_BOTTOM = 56, 52, 14, 36
_MARGIN_TOP, _MARGIN_TOP_LEGEND = 10, 24


class Colours(NamedTuple):
    """Theme colours the figure is drawn in (hex strings)."""

    background: str
    text: str
    lines: str
    marker: str


@dataclass
class Series:
    """One named curve: points, axis ("left" or "right"), style, legend label, colour."""

    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    axis: str = "left"
    style: str = "line"
    label: str = ""
    colour: str = "#f28e2b"


@dataclass(frozen=True)
class Scene:
    """Everything one frame shows: a snapshot of the plot's state."""

    series: tuple[Series, ...]
    colours: Colours
    x_label: str
    y_label: str
    right_y_label: str | None
    y_range: tuple[float, float] | None
    right_y_range: tuple[float, float] | None
    marker_x: float | None
    width: int
    height: int
    scale: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        data = json.loads(text)
        data["series"] = tuple(Series(**series) for series in data["series"])
        data["colours"] = Colours(*data["colours"])
        return cls(**data)


class Frame(NamedTuple):
    """A rendered frame: RGBA bytes, size in pixels, axes box (logical px), x range."""

    data: bytes
    width: int
    height: int
    axes: tuple[float, float, float, float]  # left, top, width, height
    x_range: tuple[float, float]


def render(scene: Scene, cache: dict[str, Any]) -> Frame:
    """Draw ``scene`` with matplotlib's Agg canvas; ``cache`` keeps the figure between calls."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if "figure" not in cache:
        cache["figure"] = Figure(dpi=DPI)
        cache["canvas"] = FigureCanvasAgg(cache["figure"])
    figure, canvas = cache["figure"], cache["canvas"]
    figure.clear()
    colours = scene.colours
    width, height = scene.width, scene.height
    figure.set_dpi(DPI * scene.scale)
    figure.set_size_inches(width / DPI, height / DPI)
    figure.set_facecolor(colours.background)
    right_margin = _MARGIN_RIGHT_AXIS if scene.right_y_label else _MARGIN_RIGHT
    labelled = any(series.label for series in scene.series)
    left = _MARGIN_LEFT / width
    right = 1 - right_margin / width
    bottom = _MARGIN_BOTTOM / height
    top = 1 - (_MARGIN_TOP_LEGEND if labelled else _MARGIN_TOP) / height
    figure.subplots_adjust(left=left, right=right, bottom=bottom, top=top)
    axes = figure.add_subplot()
    twin = axes.twinx() if scene.right_y_label else None
    for ax in (axes, twin):
        if ax is None:
            continue
        ax.set_facecolor(colours.background)
        ax.tick_params(colors=colours.text, labelsize=7)
        for spine in ax.spines.values():
            spine.set_color(colours.lines)
    axes.set_xmargin(0)
    axes.set_xlabel(scene.x_label, color=colours.text, fontsize=8)
    axes.set_ylabel(scene.y_label, color=colours.text, fontsize=8)
    if scene.y_range is not None:
        axes.set_ylim(*scene.y_range)
    if twin is not None:
        twin.patch.set_visible(False)
        twin.set_ylabel(scene.right_y_label, color=colours.text, fontsize=8)
        if scene.right_y_range is not None:
            twin.set_ylim(*scene.right_y_range)
    handles = []
    for series in scene.series:
        ax = twin if series.axis == "right" and twin is not None else axes
        (line,) = ax.plot(
            series.xs,
            series.ys,
            color=series.colour,
            linewidth=1.2 if "line" in series.style else 0,
            marker="o" if "points" in series.style else None,
            markersize=3,
            label=series.label,
        )
        if series.label:
            handles.append(line)
    if scene.marker_x is not None:
        axes.axvline(scene.marker_x, color=colours.marker, linewidth=1.2)
    if labelled:
        # A row above the axes: it never hides the curves.
        figure.legend(
            handles=handles,
            loc="upper center",
            ncols=len(handles),
            fontsize=7,
            frameon=False,
            labelcolor=colours.text,
            borderaxespad=0.2,
        )
    canvas.draw()
    buffer = canvas.buffer_rgba()
    x0, x1 = axes.get_xlim()
    box = (left * width, (1 - top) * height, (right - left) * width, (top - bottom) * height)
    return Frame(bytes(buffer), buffer.shape[1], buffer.shape[0], box, (float(x0), float(x1)))


def write_frame(stream: BinaryIO, frame: Frame) -> None:
    header = {"width": frame.width, "height": frame.height, "axes": frame.axes}
    header |= {"x_range": frame.x_range, "size": len(frame.data)}
    stream.write(json.dumps(header).encode() + b"\n")
    stream.write(frame.data)
    stream.flush()


def read_frame(stream: BinaryIO) -> Frame:
    """The next frame from ``stream``; EOFError if the renderer has gone."""
    line = stream.readline()
    if not line:
        raise EOFError("the plot renderer has exited")
    header = json.loads(line)
    if "error" in header:
        raise RuntimeError(f"the plot renderer failed: {header['error']}")
    data = stream.read(header["size"])
    if len(data) != header["size"]:
        raise EOFError("the plot renderer has exited")
    axes, x_range = tuple(header["axes"]), tuple(header["x_range"])
    return Frame(data, header["width"], header["height"], axes, x_range)


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer each scene line on ``stdin`` with a frame on ``stdout`` until stdin closes."""
    cache: dict[str, Any] = {}
    render(
        Scene(
            (),
            Colours("#000000", "#ffffff", "#808080", "#ffffff"),
            "",
            "",
            None,
            None,
            None,
            None,
            100,
            100,
            1.0,
        ),
        cache,
    )
    for line in stdin:
        try:
            frame = render(Scene.from_json(line.decode()), cache)
        except Exception as error:  # reported to the plot, which logs it
            stdout.write(json.dumps({"error": f"{type(error).__name__}: {error}"}).encode() + b"\n")
            stdout.flush()
            continue
        write_frame(stdout, frame)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
