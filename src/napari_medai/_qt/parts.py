"""Dock layout parts the docks share, for what magicgui has no widget.

:class:`DetailsView`, a collapsible view of (what, value) rows; :func:`narrow`,
which keeps a combo box with long entries from widening its dock;
:class:`OnPress`, which tells when a widget is clicked;
:func:`scroll_column`, :func:`fit_width` and :func:`wrapping`, which keep a dock
scrolling inside itself instead of growing the window; :func:`ask_overwrite`.
Layer pickers are in ``layer_pickers.py``, software OpenGL in ``software_gl.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from pathlib import Path

from magicgui.widgets import Container, Label
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QLabel,
    QMessageBox,
    QScrollArea,
    QSizePolicy,
    QWidget,
)
from superqt import QCollapsible

from napari_medai._napari.details import Rows

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
