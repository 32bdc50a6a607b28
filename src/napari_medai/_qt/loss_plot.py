"""Live plot of the training loss and validation Dice, for the Train dock.

Points arrive with every optimizer step while the GUI thread must stay
responsive (issue 4: event-loop stalls under 100 ms). Drawing even this small
matplotlib figure takes 70-150 ms on a busy 2-core CPU (measured with
``FigureCanvasQTAgg``; blitting only helps until an axis rescales), so the
figure is rendered with matplotlib's Agg canvas in a helper thread and the GUI
thread only shows the finished image. A timer starts at most ``max_fps``
renders a second, one at a time, and only when new points came in. The figure
is touched by that thread alone; the GUI thread hands it copies of the points.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

LOSS_COLOUR = "tab:orange"
DICE_COLOUR = "tab:blue"
HEIGHT_PX = 180
DPI = 100.0

Points = list[tuple[int, float]]
#: A rendered frame: RGBA bytes, width and height in pixels.
Frame = tuple[bytes, int, int]


class _Chart:
    """The matplotlib figure; used by the render thread only."""

    def __init__(self) -> None:
        self.figure = Figure(dpi=DPI)
        self.canvas = FigureCanvasAgg(self.figure)
        self.loss_axes = self.figure.add_subplot()
        self.dice_axes = self.loss_axes.twinx()
        self.loss_axes.set_xlabel("iteration", fontsize=8)
        self.loss_axes.set_ylabel("loss", color=LOSS_COLOUR, fontsize=8)
        self.dice_axes.set_ylabel("validation Dice", color=DICE_COLOUR, fontsize=8)
        self.dice_axes.set_ylim(0.0, 1.0)
        for axes in (self.loss_axes, self.dice_axes):
            axes.tick_params(labelsize=7)
        (self.loss_line,) = self.loss_axes.plot([], [], color=LOSS_COLOUR, linewidth=1)
        (self.dice_line,) = self.dice_axes.plot(
            [], [], color=DICE_COLOUR, marker="o", markersize=3, linewidth=1
        )

    def render(self, loss: Points, dice: Points, width: int, height: int, scale: float) -> Frame:
        """Draw the points at ``width`` x ``height`` logical pixels times ``scale``."""
        self.figure.set_dpi(DPI * scale)
        self.figure.set_size_inches(width / DPI, height / DPI)
        self.figure.subplots_adjust(
            left=45 / width, right=1 - 45 / width, bottom=32 / height, top=1 - 8 / height
        )
        for line, points in ((self.loss_line, loss), (self.dice_line, dice)):
            line.set_data([p[0] for p in points], [p[1] for p in points])
        self.loss_axes.relim()
        self.loss_axes.autoscale_view()
        self.canvas.draw()
        buffer = self.canvas.buffer_rgba()
        return bytes(buffer), buffer.shape[1], buffer.shape[0]


class LossPlot(QWidget):
    """Loss (left axis) and validation Dice (right axis, 0..1) against iteration."""

    def __init__(self, max_fps: float = 5.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._loss: Points = []
        self._dice: Points = []
        self._dirty = True
        self._chart = _Chart()
        # Its thread ends by itself once the plot, and so the executor, is collected.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loss-plot")
        self._pending: Future[Frame] | None = None
        #: Frames shown so far.
        self.redraws = 0
        self._view = QLabel()
        self._view.setFixedHeight(HEIGHT_PX)
        self._view.setMinimumWidth(160)
        self._view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self._timer = QTimer(self)
        self._timer.setInterval(max(1, round(1000.0 / max_fps)))
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._view)

    @property
    def loss_points(self) -> list[tuple[int, float]]:
        """(iteration, loss) pairs received since the last :meth:`clear`."""
        return list(self._loss)

    @property
    def dice_points(self) -> list[tuple[int, float]]:
        """(iteration, validation Dice) pairs received since the last :meth:`clear`."""
        return list(self._dice)

    def clear(self) -> None:
        """Forget every point (a new training run starts)."""
        self._loss.clear()
        self._dice.clear()
        self._dirty = True

    def add(self, iteration: int, loss: float, val_dice: float | None = None) -> None:
        """Record one step; drawn within a timer tick or two."""
        self._loss.append((iteration, loss))
        if val_dice is not None:
            self._dice.append((iteration, val_dice))
        self._dirty = True

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._dirty = True

    def _tick(self) -> None:
        """Show a finished frame; start the next render if points came in."""
        if self._pending is not None:
            if not self._pending.done():
                return
            self._show(*self._pending.result())
            self._pending = None
        if not self._dirty:
            return
        self._dirty = False
        width = max(self._view.width(), self._view.minimumWidth())
        self._pending = self._executor.submit(
            self._chart.render,
            list(self._loss),
            list(self._dice),
            width,
            HEIGHT_PX,
            self.devicePixelRatioF(),
        )

    def _show(self, data: bytes, width: int, height: int) -> None:
        image = QImage(data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
        pixmap = QPixmap.fromImage(image)
        pixmap.setDevicePixelRatio(self.devicePixelRatioF())
        self._view.setPixmap(pixmap)
        self.redraws += 1
