"""Small Qt parts the docks share, for what magicgui has no widget.

:class:`DetailsView`, a collapsible view of (what, value) rows; :func:`narrow`,
which keeps a combo box with long entries from widening its dock;
:class:`OnPress`, which tells when a widget is clicked;
:func:`layers_of` / :func:`follow_layer_list` / :func:`scan_pickers` for layer
pickers; and
:func:`paint_apart`, which keeps a dock's repaints cheap on software OpenGL;
:func:`scroll_column`, :func:`fit_width` and :func:`wrapping`, which keep a dock
scrolling inside itself instead of growing the window; :func:`ask_overwrite`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from html import escape
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, Label
from napari.components import LayerList
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtGui import QOffscreenSurface, QOpenGLContext
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QLabel,
    QMessageBox,
    QScrollArea,
    QSizePolicy,
    QWidget,
)
from superqt import QCollapsible

from napari_medai._napari.details import Rows


def layers_of(layers: LayerList, kind: type[Layer]) -> Callable[[Any], list[Layer]]:
    """A magicgui ``choices`` callable: the layers of ``kind`` in the list."""
    return lambda _widget=None: [layer for layer in layers if isinstance(layer, kind)]


def follow_layer_list(layers: LayerList, callback: Callable[..., Any]) -> None:
    """Call ``callback`` whenever a layer is added, removed or moved.

    magicgui's pickers refresh by themselves only in docks napari built; the
    docks here also update defaults and the reason a button is disabled.
    """
    for event in (layers.events.inserted, layers.events.removed, layers.events.reordered):
        event.connect(callback)


def scan_pickers(layers: LayerList) -> tuple[ComboBox, ComboBox]:
    """A "Labels" picker and an optional "Scan" picker (the image they were drawn on)."""
    labels = ComboBox(label="Labels", annotation=Labels, choices=layers_of(layers, Labels))
    scan = ComboBox(label="Scan", annotation=Image, choices=layers_of(layers, Image), nullable=True)
    return labels, scan


def refresh_scan_pickers(labels_combo: Any, image_combo: Any) -> None:
    """Re-list a Labels and a scan picker; pick the first scan when none is picked."""
    labels_combo.reset_choices()
    image_combo.reset_choices()
    scans = [choice for choice in image_combo.choices if choice is not None]
    if image_combo.value is None and scans:
        image_combo.value = scans[0]


#: Words in GL_RENDERER that mark OpenGL drawn by the CPU (Mesa's llvmpipe on Xvfb
#: and remote desktops, Google's SwiftShader, Microsoft's GDI renderer).
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "software", "swiftshader", "gdi generic")


@cache
def opengl_renderer() -> str:
    """GL_RENDERER of a context like napari's ("" when none can be made)."""
    from vispy.gloo import gl

    surface = QOffscreenSurface()
    surface.create()
    context = QOpenGLContext()
    if not (context.create() and context.makeCurrent(surface)):
        return ""
    try:
        return str(gl.glGetParameter(gl.GL_RENDERER))
    finally:
        context.doneCurrent()


def software_opengl() -> bool:
    """Whether OpenGL is drawn by the CPU, where composing napari's window is slow."""
    renderer = opengl_renderer().lower()
    return any(word in renderer for word in SOFTWARE_RENDERERS)


def paint_apart(widget: QWidget) -> None:
    """With software OpenGL, give the dock that holds ``widget`` a native window of its own.

    Qt 5 repaints a window holding a QOpenGLWidget (napari's canvas) by
    composing all of it through OpenGL, so a progress line or plot update in
    a dock costs a whole-window composition: ~36 ms per repaint at
    1600x1000 on software OpenGL (Xvfb, remote desktops), against ~2 ms
    once the dock paints into a native window of its own (measured with
    ``processEvents`` after ``setText``). On a GPU the composition is cheap,
    and native child windows are fragile (macOS, Wayland, floating docks), so
    there, and outside a dock, this does nothing.
    """
    if not software_opengl():
        return
    child = widget
    while child.parentWidget() is not None and not isinstance(child.parentWidget(), QDockWidget):
        child = child.parentWidget()
    if child.parentWidget() is not None:
        child.setAttribute(Qt.WidgetAttribute.WA_NativeWindow)


EMPTY = "Pick a result layer to see how it was made."


class OnPress(QObject):
    """Calls ``callback`` when the watched widget is clicked (to re-read a list first)."""

    def __init__(self, callback: Callable[[], None], parent: QObject) -> None:
        super().__init__(parent)
        self._callback = callback

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.MouseButtonPress:
            self._callback()
        return False


#: Characters a combo box shows before eliding; the popup still shows entries in full.
COMBO_CHARS = 16


def narrow(combo: QComboBox, chars: int = COMBO_CHARS) -> None:
    """Size ``combo`` by ``chars`` characters, not by its longest entry (model summaries)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)


class DetailsView(QCollapsible):
    """Collapsed by default; shows rows as a small two-column table, selectable text."""

    #: Tallest the expanded rows may be; longer ones scroll inside it, never growing the dock.
    MAX_HEIGHT = 240

    def __init__(self, title: str = "Details", parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.label = QLabel(EMPTY)
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        scroll = QScrollArea()
        scroll.setWidget(self.label)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMaximumHeight(self.MAX_HEIGHT)
        self.addWidget(scroll)
        self.rows: Rows = []

    def show_rows(self, rows: Rows, empty: str = EMPTY) -> None:
        """Replace the content with ``rows`` (``empty`` when there are none)."""
        self.rows = list(rows)
        cells = "".join(
            f"<tr><td style='padding-right:8px'><b>{escape(key)}</b></td>"
            f"<td>{escape(value)}</td></tr>"
            for key, value in rows
        )
        self.label.setText(f"<table>{cells}</table>" if rows else escape(empty))
        if self.isExpanded():  # re-measure the content, which may have grown
            self.label.adjustSize()
            self.collapse(animate=False)
            self.expand(animate=False)

    def text(self) -> str:
        """The rows as plain text, one ``what: value`` per line (for tests and copying)."""
        return "\n".join(f"{key}: {value}" for key, value in self.rows)


def ask_overwrite(parent, paths: list[Path]) -> bool:
    """Ask the user whether to replace the existing ``paths`` (tests replace this)."""
    names = "\n".join(path.name for path in paths)
    answer = QMessageBox.question(
        parent,
        "Replace files?",
        f"These files already exist:\n{names}\n\nReplace them?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def wrapping(label: Label) -> Label:
    """``label`` wrapping its text, so a long message (or path) never widens the dock."""
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


def scroll_column(
    dock: Container, form: Container, *below: QWidget, pinned: tuple[QWidget, ...] = ()
) -> None:
    """Lay ``dock`` out as one column that scrolls inside the dock when space is short.

    ``form`` is a ``scrollable`` magicgui Container; ``below`` (Qt parts
    magicgui has no widget for: results, notes) go under its fields at full
    width and scroll with them; ``pinned`` (progress, a status line) stay in
    view under the scroll area. napari docks ``dock.native``, so the scroll
    area goes in there.
    """
    rows = form.native.layout()
    for widget in below:
        rows.addWidget(widget)
    rows.addStretch(1)
    scroll = form.root_native_widget
    fit_width(scroll)
    layout = dock.native.layout()
    layout.setContentsMargins(0, 0, 0, 0)
    for part in (scroll, *pinned):
        layout.addWidget(part)


class _FitWidth(QObject):
    """Keeps a scroll area as wide as its content plus a vertical scroll bar.

    Measured again whenever the content's layout changes: napari's style sheet,
    applied once the dock is shown, makes the fields wider than they were built.
    """

    def __init__(self, scroll: QScrollArea) -> None:
        super().__init__(scroll)
        self._scroll = scroll
        scroll.widget().installEventFilter(self)
        self.fit()

    def fit(self) -> None:
        content = self._scroll.widget().minimumSizeHint().width()
        bar = self._scroll.verticalScrollBar().sizeHint().width()
        self._scroll.setMinimumWidth(content + bar + 2 * self._scroll.frameWidth())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.LayoutRequest:
            self.fit()
        return False


def fit_width(scroll: QScrollArea) -> None:
    """Keep ``scroll`` wide enough for its content and a vertical scroll bar beside it.

    It never scrolls sideways, so a narrower one would cut its fields off at the right.
    """
    _FitWidth(scroll)
