"""Results in the Classify dock: the per-input table and a classifier's held-out figures.

The figures are those of the split a training run held out, or of examples
the user picked ("Evaluate", ``classify_evaluate``), as core computed them
(``core.classification.metrics.classification_metrics``): a line saying what
they were computed on and, in words, what could not be computed ("n/a" in the
table), a per-class and macro table (precision, recall, F1, ROC AUC, support),
the one-vs-rest ROC curves on the themed :class:`LivePlot` with the chance
diagonal, and the confusion matrix, each bounded in height. No
metric maths here. "Save metrics..." writes JSON and CSV through core's
``save_metrics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_medai._qt.plot import LivePlot
from napari_medai.core.classification.report import save_metrics
from napari_medai.core.errors import MedaiError

if TYPE_CHECKING:
    import napari
    import pandas as pd

    from napari_medai.core.classification.config import TrainedClassifier

CHANCE = "chance"
COLUMNS = ("precision", "recall", "f1", "roc_auc", "support")
HEADERS = ("class", "precision", "recall", "F1", "ROC AUC", "n")
EMPTY = "Train a classifier, or Evaluate one on picked examples: its figures show here"


#: Tallest a figures table grows before it scrolls (about eight rows).
MAX_TABLE_PX = 200
#: Tallest the per-input results table grows before it scrolls.
MAX_RESULTS_PX = 240
#: A figure that cannot be computed (the notes under the line above the table say why).
NOT_COMPUTED = "n/a"


def figure_text(value: Any) -> str:
    """A figure as the dock shows it: three decimals, "n/a" where it cannot be computed."""
    if value is None:
        return NOT_COMPUTED
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _missing(metrics: dict[str, Any]) -> str:
    """The classes without a case, as ``'a' or 'b'`` ("" when every class has one)."""
    return " or ".join(repr(name) for name in metrics.get("missing_classes", []))


def trained_text(result: TrainedClassifier, noun: str) -> str:
    """The status after training: the held-out figures (or why there are none), what was kept."""
    model, metrics = result.best_path.name, result.metrics
    kept = f"; kept {result.kept}"
    if metrics is None:
        return f"saved {model}; nothing was held out to score it{kept}"
    on = metrics["computed_on"]
    missing = _missing(metrics)
    if missing:
        return (
            f"saved {model}; its {on['cases']} held-out {noun} hold no {missing} example, so "
            "no held-out figure can judge it (ROC AUC cannot be computed): type slices that "
            f"hold every class in 'Held-out slices' and Evaluate, or Train again{kept}"
        )
    auc = figure_text(metrics["macro"]["roc_auc"])
    return (
        f"held-out accuracy {metrics['accuracy']:.3f}, macro ROC AUC {auc} on {on['cases']} "
        f"{noun} ({on['description']}){kept}"
    )


def _fill(table: QTableWidget, headers: list[str], rows: list[list[Any]]) -> None:
    """Put ``rows`` into ``table`` read-only, sized to its contents up to MAX_TABLE_PX."""
    table.clear()
    table.setColumnCount(len(headers))
    table.setRowCount(len(rows))
    table.setHorizontalHeaderLabels(headers)
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            item = QTableWidgetItem(figure_text(value))
            if value is None:
                item.setToolTip("cannot be computed on these cases (see the notes above)")
            table.setItem(r, c, item)
    table.resizeColumnsToContents()
    table.resizeRowsToContents()
    # The first column holds class names: whole, the figures share the rest.
    table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
    height = table.horizontalHeader().height() + 2 * table.frameWidth()
    height += sum(table.rowHeight(r) for r in range(len(rows)))
    table.setFixedHeight(min(height + 2, MAX_TABLE_PX))


def _table() -> QTableWidget:
    table = QTableWidget(0, 0)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    table.setFixedHeight(0)
    return table


def new_result_table() -> QTableWidget:
    """The per-input results table (hidden until a run fills it)."""
    table = QTableWidget(0, 0)
    table.verticalHeader().setVisible(False)
    table.setMinimumHeight(120)
    table.setMaximumHeight(MAX_RESULTS_PX)
    table.setVisible(False)
    return table


def show_results(table: QTableWidget, frame: pd.DataFrame) -> None:
    """Put a run's results (one row per input) into ``table``."""
    table.setRowCount(len(frame))
    table.setVisible(True)
    table.setColumnCount(len(frame.columns))
    table.setHorizontalHeaderLabels([str(c) for c in frame.columns])
    for row, values in enumerate(frame.itertuples(index=False)):
        for column, value in enumerate(values):
            table.setItem(row, column, QTableWidgetItem(str(value)))
    table.resizeColumnsToContents()


def plot_training(plot: LivePlot, payload: Any) -> None:
    """Add the loss and held-out macro AUC a training job's progress ``payload`` carries."""
    if isinstance(payload, dict) and "loss" in payload:
        plot.append("loss", payload["iteration"], payload["loss"])
        if payload.get("val_auc") is not None:
            plot.append("auc", payload["iteration"], payload["val_auc"])


def slice_curve(viewer: napari.viewer.Viewer | None) -> LivePlot:
    """The per-slice probability curve (the dock moves to a slice when it is clicked)."""
    return LivePlot(
        viewer,
        x_label="slice",
        y_label="probability",
        empty_text="Run 'every slice' to see the curve; click it to go to a slice",
        y_range=(0.0, 1.0),
    )


def training_plot(viewer: napari.viewer.Viewer | None) -> LivePlot:
    """The live plot of a training run: loss (left), held-out macro ROC AUC (right, 0..1)."""
    plot = LivePlot(
        viewer,
        x_label="iteration",
        y_label="loss",
        right_y_label="held-out macro ROC AUC",
        right_y_range=(0.0, 1.0),
        empty_text="Loss and held-out macro ROC AUC show here while training",
    )
    plot.set_series("loss", [], [], label="loss")
    plot.set_series("auc", [], [], axis="right", style="line+points", label="held-out AUC")
    return plot


class MetricsView(QWidget):
    """Per-class figures, ROC curves and confusion matrix of one metrics dict."""

    def __init__(self, viewer: napari.viewer.Viewer | None = None) -> None:
        super().__init__()
        #: The metrics shown (as core returned them), or None.
        self.metrics: dict[str, Any] | None = None
        #: Every class an ROC curve was drawn for (another model may have other classes).
        self._curves: set[str] = set()
        self.computed_on = QLabel(EMPTY)
        self.computed_on.setWordWrap(True)
        self.figures = _table()
        self.confusion_title = QLabel("Confusion matrix (rows: true, columns: predicted)")
        self.confusion = _table()
        self.confusion.verticalHeader().setVisible(True)
        self.roc = LivePlot(
            viewer,
            x_label="false positive rate",
            y_label="true positive rate",
            empty_text="ROC curves (one per class) show here after Train or Evaluate",
            y_range=(0.0, 1.0),
        )
        self.save_button = QPushButton("Save metrics...")
        self.save_button.setToolTip("write the figures as JSON and CSV")
        self.save_button.clicked.connect(self.ask_and_save)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.setSpacing(6)
        for widget in (
            self.computed_on,
            self.figures,
            self.roc,
            self.confusion_title,
            self.confusion,
            self.save_button,
        ):
            layout.addWidget(widget)
        self.show_metrics(None)

    def show_metrics(self, metrics: dict[str, Any] | None) -> None:
        """Show ``metrics`` (None: the empty state)."""
        self.metrics = metrics
        self.save_button.setEnabled(metrics is not None)
        self.roc.clear()
        for widget in (self.figures, self.confusion_title, self.confusion):
            widget.setVisible(metrics is not None)
        if metrics is None:
            self.computed_on.setText(EMPTY)
            self._fit_text()
            return
        on = metrics["computed_on"]
        counts = ", ".join(f"{n} {name}" for name, n in on["per_class"].items())
        model = f"Model '{on['model']}' scored on" if "model" in on else "Computed on"
        notes = metrics.get("notes", [])
        accuracy = "" if _missing(metrics) else f" Accuracy {metrics['accuracy']:.3f}."
        self.computed_on.setText(
            f"{model} {on['cases']} held-out cases ({counts}); {on['description']}.{accuracy}"
            + "".join(f" Note: {note}." for note in notes)
        )
        rows = [[name, *(row[c] for c in COLUMNS)] for name, row in metrics["per_class"].items()]
        rows.append(["macro", *(metrics["macro"][c] for c in COLUMNS[:-1]), on["cases"]])
        _fill(self.figures, list(HEADERS), rows)
        matrix = metrics["confusion_matrix"]
        _fill(self.confusion, list(matrix["classes"]), matrix["rows_true_columns_predicted"])
        self.confusion.setVerticalHeaderLabels(list(matrix["classes"]))
        self.roc.set_series(CHANCE, [0, 1], [0, 1], label="chance")
        for name in self._curves - set(metrics["roc_curves"]):  # out of the legend
            self.roc.set_series(name, [], [], label="")
        for name, curve in metrics["roc_curves"].items():
            label = f"{name} (AUC {figure_text(metrics['per_class'][name]['roc_auc'])})"
            self.roc.set_series(name, curve["fpr"], curve["tpr"], style="line+points", label=label)
            self._curves.add(name)
        # The tables' heights changed: ask the dock for room, or the layout overlaps them.
        self._fit_text()
        self.layout().activate()
        self.updateGeometry()

    def _fit_text(self) -> None:
        """Reserve the wrapped "computed on" text's height at the current width.

        A wrapped label under-reports its height to the dock's layout, which then
        overlaps the widgets below it; the description names user-picked layers,
        so its length varies.
        """
        label = self.computed_on
        lines = 3 * label.fontMetrics().lineSpacing() + 4
        label.setMinimumHeight(max(lines, label.heightForWidth(max(label.width(), 200))))

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Re-fit the wrapped text to the new width."""
        super().resizeEvent(event)
        self._fit_text()

    def save(self, base: Path) -> list[Path]:
        """Write the shown metrics to ``<base>.json`` and ``<base>.csv``."""
        if self.metrics is None:
            raise MedaiError("there are no metrics to save; train or evaluate a classifier first")
        return save_metrics(self.metrics, base, overwrite=True)

    def ask_and_save(self, *_args) -> None:
        """Ask where, then save (the dialog's own overwrite question covers both files)."""
        path, _ = QFileDialog.getSaveFileName(self, "Save metrics", "metrics.json", "JSON (*.json)")
        if not path:
            return
        base = Path(path)
        base = base.with_suffix("") if base.suffix.lower() in (".json", ".csv") else base
        try:
            paths = self.save(base)
        except (MedaiError, OSError) as error:
            show_error(f"Save metrics failed: {error}")
            return
        show_info("saved " + " and ".join(p.name for p in paths))
