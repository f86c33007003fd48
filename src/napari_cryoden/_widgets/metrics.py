"""The Metrics dock widget: image layers + reference + region -> worker thread -> table and FSC plot.

The widget is thin. What its choices mean for the core is decided by the plain functions of
:mod:`napari_cryoden._widgets.metrics_settings` (no Qt): :func:`metrics_jobs` turns the chosen
layers' arrays into calls of :func:`napari_cryoden.metrics.compare` (checking shapes first),
:func:`view_box` turns the camera into a box in world coordinates, :func:`table_rows` formats the
results and :func:`plot_fsc` draws them on a matplotlib ``Axes``. Arrays (never layers) go into a
napari ``thread_worker``; the main-thread handlers fill the table and redraw the plot. Results
can be saved as CSV (the table, plus the curves in ``<name>_fsc.csv``) and the plot as PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

import napari.viewer
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, Select
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ..metrics import Roi, bounding_box_roi, describe_roi, write_fsc_csv, write_metrics_csv
from ._common import Failed as _Failed, follow_renames, image_choices, layer_array, one_line, status_label, watch_layers
from .metrics_settings import (
    CURRENT_VIEW, TABLE_COLUMNS, WHOLE, MetricsJob, MetricsResult, displayed_data_axes, metrics_jobs, plot_fsc,
    table_rows, view_box, view_corners,
)

__all__ = [
    "CURRENT_VIEW", "TABLE_COLUMNS", "WHOLE", "MetricsJob", "MetricsResult", "MetricsWidget",
    "metrics_jobs", "plot_fsc", "table_rows", "view_box",
]

log = logging.getLogger(__name__)


def _metrics_job(jobs: Sequence[MetricsJob]) -> Generator[tuple[int, int], None, Any]:
    """Run in the worker thread: yield ``(done, total)``, return the results or a :class:`_Failed`."""
    results = []
    yield 0, len(jobs)
    for i, job in enumerate(jobs):
        try:
            results.append(job.run())
        except (ValueError, MemoryError) as exc:
            return _Failed(f"{job.name}: {one_line(exc)}")
        except Exception as exc:  # noqa: BLE001 (shown to the user, logged with its traceback)
            log.exception("metrics failed")
            return _Failed(f"{job.name}: {type(exc).__name__}: {exc}")
        yield i + 1, len(jobs)
    return results


def _camera(viewer: napari.viewer.Viewer):
    """The viewer's camera: ``viewer.scene.camera`` (napari >= 0.9) or ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _layer_array(layer: Image) -> Any:
    """The array behind an image layer (level 0 of a multiscale one), without copying it."""
    return layer_array(layer, "the metrics need grayscale data")


class MetricsWidget(QWidget):
    """Dock widget that scores image layers against a reference layer: SSIM, PSNR, MSE, NRMSE, FSC.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    parent : QWidget, optional

    Attributes
    ----------
    images : magicgui Select
        The image layers to score (several may be chosen).
    reference : magicgui ComboBox
        The reference image layer; its scale is the voxel size (Å) of the FSC.
    region : magicgui ComboBox
        ``"whole"`` (:data:`WHOLE`), ``"view"`` (:data:`CURRENT_VIEW`: the part of the displayed
        plane visible in the canvas, all slices along the other axes) or a Shapes layer (the
        bounding box of its selected shapes, or of all shapes when none is selected, along the
        axes the shapes span).
    half_maps : magicgui CheckBox
        Even/odd mode: each image and the reference are independent half maps; FSC only.
    run_button, cancel_button, export_csv_button, export_png_button : magicgui PushButton
    status : magicgui Label
    table : QTableWidget
        One row per image, :data:`TABLE_COLUMNS`.
    figure : matplotlib Figure
    canvas : FigureCanvasQTAgg
    axes : matplotlib Axes
        The FSC plot.
    results : list of MetricsResult
        The last results shown.
    worker : GeneratorWorker or None
        The running job, if any.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self.worker = None
        self.results: list[MetricsResult] = []
        self._pending_roi: Roi | None = None

        self.images = Select(label="images", choices=self._image_choices,
                             tooltip="Image layers to score (Ctrl/Shift-click for several)")
        self.reference = ComboBox(label="reference", choices=self._image_choices,
                                  tooltip="Ground truth, or the other half map in even/odd mode; its scale "
                                          "is the voxel size in Å")
        self.region = ComboBox(label="region", choices=self._region_choices,
                               tooltip="Whole volume, the part visible in the canvas, or the bounding box of "
                                       "the (selected) shapes of a Shapes layer")
        self.half_maps = CheckBox(text="even/odd half maps",
                                  tooltip="Images and reference are independent half maps: only the FSC "
                                          "is computed (read it at 0.143)")
        self.run_button = PushButton(text="Compute")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = status_label()
        self.export_csv_button = PushButton(text="Save table (CSV)", enabled=False)
        self.export_png_button = PushButton(text="Save plot (PNG)", enabled=False)
        self._container = Container(widgets=[
            self.images, self.reference, self.region, self.half_maps, self.run_button, self.cancel_button,
            self.status,
        ])
        self._exports = Container(widgets=[self.export_csv_button, self.export_png_button], layout="horizontal",
                                  labels=False)

        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.figure = Figure(figsize=(4.0, 3.0), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.axes = self.figure.add_subplot()
        plot_fsc(self.axes, [])

        layout = QVBoxLayout(self)
        layout.addWidget(self._container.native)
        layout.addWidget(self.table)
        layout.addWidget(self.canvas, stretch=1)
        layout.addWidget(self._exports.native)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.export_csv_button.changed.connect(self._ask_csv)
        self.export_png_button.changed.connect(self._ask_png)
        watch_layers(viewer, self._on_layers_changed)

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return image_choices(self._viewer)

    def _region_choices(self, _widget=None) -> list[tuple[str, Any]]:
        shapes = [(f"shapes: {layer.name}", layer) for layer in self._viewer.layers if isinstance(layer, Shapes)]
        return [("whole volume", WHOLE), ("current view", CURRENT_VIEW), *shapes]

    def _on_layers_changed(self, event=None) -> None:
        follow_renames(event, self._on_layers_changed)
        self.reset_choices()

    def reset_choices(self, _event=None) -> None:
        """Refresh the layer lists (napari calls this when layers change)."""
        self.images.reset_choices()
        self.reference.reset_choices()
        self.region.reset_choices()

    # ------------------------------------------------------------------ region
    def region_roi(self, reference: Image | None = None) -> Roi | None:
        """The chosen region as slices of the reference layer's array (None: whole volume).

        Raises
        ------
        ValueError
            If the region is empty, outside the reference, or "current view" is asked in 3D.
        """
        reference = reference if reference is not None else self.reference.value
        choice = self.region.value
        if reference is None or choice in (None, WHOLE):
            return None
        shape = _layer_array(reference).shape
        if choice == CURRENT_VIEW:
            return self._view_roi(reference, shape)
        return self._shapes_roi(choice, reference, shape)

    def _to_data(self, reference: Image, world_points: np.ndarray) -> np.ndarray:
        """World points (trailing axes; leading ones from the current dims point) -> reference data."""
        point = np.asarray(self._viewer.dims.point, float)
        out = []
        for p in np.atleast_2d(world_points):
            full = point.copy()
            full[len(full) - len(p):] = p
            out.append(np.asarray(reference.world_to_data(full), float))
        return np.array(out)

    def _view_roi(self, reference: Image, shape) -> Roi:
        dims = self._viewer.dims
        if dims.ndisplay != 2:
            raise ValueError("'current view' needs the 2D view; switch to 2D or pick another region")
        displayed = list(dims.displayed)
        canvas = self._viewer.canvas
        size = canvas.viewbox_size(self._viewer.layers) if hasattr(canvas, "viewbox_size") else canvas.size
        camera = _camera(self._viewer)
        box = view_box(camera.center[-2:], camera.zoom, size)
        points = self._to_data(reference, view_corners(dims.point, displayed, box))
        axes = displayed_data_axes(displayed, len(dims.point), len(shape))
        return bounding_box_roi(points, shape, axes=axes)

    def _shapes_roi(self, layer: Shapes, reference: Image, shape) -> Roi:
        if len(layer.data) == 0:
            raise ValueError(f"Shapes layer {layer.name!r} has no shapes; draw a rectangle first")
        chosen = sorted(layer.selected_data) or range(len(layer.data))
        vertices = np.concatenate([layer.data[i] for i in chosen])
        world = np.array([layer.data_to_world(v) for v in vertices])
        points = self._to_data(reference, world)
        axes = list(range(len(shape)))[-world.shape[1]:]
        return bounding_box_roi(points, shape, axes=axes)

    # ------------------------------------------------------------------ run
    @property
    def is_running(self) -> bool:
        """True while metrics are being computed."""
        return self.worker is not None

    def jobs(self) -> list[MetricsJob]:
        """The jobs for the current choices (arrays, not layers).

        Raises
        ------
        ValueError
            If no reference or image is chosen, shapes differ, or the region is unusable.
        """
        reference = self.reference.value
        if reference is None:
            raise ValueError("choose a reference layer")
        ref_data = _layer_array(reference)
        roi = self.region_roi(reference)
        images = [(layer.name, _layer_array(layer)) for layer in self.images.value]
        scale = np.asarray(reference.scale, float)[-ref_data.ndim:]
        return metrics_jobs(images, (reference.name, ref_data), voxel_size=scale, roi=roi,
                            half_maps=self.half_maps.value)

    def run(self, _value=None) -> None:
        """Compute the metrics in a worker thread (the Compute button).

        Problems with the choices show as an error notification; nothing is started then.
        """
        if self.is_running:
            return
        try:
            jobs = self.jobs()
        except ValueError as exc:
            show_error(f"Metrics: {exc}")
            return
        self._pending_roi = jobs[0].kwargs["roi"]
        self.worker = create_worker(
            _metrics_job, jobs, _start_thread=False,
            _connect={"yielded": self._on_yielded, "returned": self._on_returned, "finished": self._on_finished},
        )
        self.status.value = f"computing {len(jobs)} comparison(s)…"
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.worker.start()

    def cancel(self, _value=None) -> None:
        """Stop after the current image (the Cancel button); the table keeps its old results."""
        if self.worker is not None:
            self.worker.quit()
            self.cancel_button.enabled = False
            self.status.value = "cancelling…"

    def _on_yielded(self, value: tuple[int, int]) -> None:
        done, total = value
        self.status.value = f"computing… {done}/{total}"

    def _on_returned(self, result: Any) -> None:
        if isinstance(result, _Failed):
            self.status.value = "failed"
            show_error(f"Metrics: {result.message}")
            return
        self.show_results(result)
        self.status.value = f"{len(result)} result(s), region: {describe_roi(self._pending_roi)}"

    def _on_finished(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None and worker.abort_requested:
            self.status.value = "cancelled"
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    # ------------------------------------------------------------------ output
    def show_results(self, results: Sequence[MetricsResult]) -> None:
        """Fill the table and redraw the FSC plot."""
        self.results = list(results)
        rows = table_rows(self.results)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        plot_fsc(self.axes, self.results)
        self.canvas.draw_idle()
        self.export_csv_button.enabled = self.export_png_button.enabled = bool(self.results)

    def export_csv(self, path: str | Path) -> tuple[Path, Path]:
        """Write the table to `path` and the FSC curves to ``<stem>_fsc.csv`` next to it."""
        path = Path(path)
        rows = [{"image": r.name, "reference": r.reference_name, **r.report.row()} for r in self.results]
        write_metrics_csv(path, rows)
        curves_path = path.with_name(f"{path.stem}_fsc.csv")
        write_fsc_csv(curves_path, {r.name: r.report.curve for r in self.results})
        return path, curves_path

    def export_png(self, path: str | Path, *, dpi: int = 150) -> Path:
        """Save the FSC plot as an image (PNG, or any format matplotlib knows by the suffix)."""
        self.figure.savefig(path, dpi=dpi)
        return Path(path)

    def _ask_path(self, caption: str, pattern: str, suffix: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, caption, f"metrics{suffix}", pattern)
        return path or None

    def _ask_csv(self, _value=None) -> None:
        path = self._ask_path("Save metrics table", "CSV files (*.csv)", ".csv")
        if path:
            self._save(self.export_csv, path)

    def _ask_png(self, _value=None) -> None:
        path = self._ask_path("Save FSC plot", "PNG images (*.png)", ".png")
        if path:
            self._save(self.export_png, path)

    def _save(self, write: Callable[[str], Any], path: str) -> None:
        try:
            write(path)
        except OSError as exc:
            show_error(f"Metrics: could not save {path}: {exc.strerror or exc}")
            return
        self.status.value = f"saved {path}"
