"""The Denoise dock widget: image layer + model + tiling options -> worker thread -> new layer.

The widget is thin. What its settings mean for the core is decided by the plain functions of
:mod:`napari_cryoden._widgets.denoise_settings` (no Qt): :func:`denoise_kwargs` turns them into
the keyword arguments of :func:`napari_cryoden.inference.iter_denoise`,
:func:`~napari_cryoden._widgets.denoise_settings.resample_plan` into the resampling plan, and
:func:`denoised_layer_kwargs` builds the attributes of the result layer. The layer's array (a numpy array or a
read-only memmap, never the layer) goes into a napari ``thread_worker`` that runs the core
generator; progress comes back through the worker's ``yielded`` signal, and only the main-thread
handlers touch the viewer. Cancel quits the worker and closes the core generator; nothing is
added.

Pressing Denoise while a job runs queues a second job (with the settings and layer of that
moment); queued jobs start one after the other, and Cancel stops the running job and empties the
queue. Closing the viewer's window (or calling :meth:`DenoiseWidget.shutdown`) stops the worker
after its current tile, drops the queue and adds nothing. NaN/Inf voxels of the input are
replaced by the median, and a warning notification gives their number.

3D models take tomograms; 2D models take 2D images and stacks slice by slice (a tomogram given
to a 2D model is denoised slice by slice along Z, with a notification saying so); a 3D model
refuses a 2D image or a ``.mrcs`` stack with an error notification.

The model follows the selected layer (the 3D default for a tomogram, the 2D default for a 2D
image or a ``.mrcs`` stack) until the user picks one. When the layer's pixel size (its scale, or
the "pixel size" field) is far from the model's, the data is Fourier-binned to the model's pixel
size, denoised and padded back (resample "auto"), or the result is kept at the model's pixel size
("binned"); the widget shows what it will do, e.g. "layer 0.667 Å → model 5 Å, binned ×7.5".

Preview denoises only a slab around the displayed slice (:func:`~napari_cryoden.inference.
preview.iter_denoise_preview`: ±16 slices with a 3D model, the displayed slice with a 2D model,
the whole image for a 2D image) in the same worker, and shows it as the layer
``"<name> preview"``, placed at the slab's Z offset; pressing Preview again after moving
replaces it.
"""

from __future__ import annotations

import logging
from typing import Any, Generator

import napari.viewer
import numpy as np
import torch
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..inference import iter_denoise
from ..inference.preview import iter_denoise_preview
from ..inference.resample import RESAMPLE_CHOICES, ResamplePlan, iter_denoise_resampled
from ..models import DEFAULT_MODEL, available_models, default_model_for
from ._common import (
    Failed as _Failed, advance, close_activity, disconnect, follow_renames, image_choices, layer_array, one_line,
    status_label, watch_layers, watch_window,
)
from .denoise_settings import (
    AUTO_OVERLAP, AUTO_TILE, DEVICES, PRECISIONS, contrast_limits, denoise_kwargs, denoised_layer_kwargs,
    is_image_stack, layer_source, model_ndim, output_scale, preview_layer_kwargs, resample_plan, slice_by_slice,
)

__all__ = [
    "AUTO_OVERLAP", "AUTO_TILE", "DEVICES", "PRECISIONS", "DenoiseWidget", "contrast_limits", "denoise_kwargs",
    "denoised_layer_kwargs", "preview_layer_kwargs",
]

_MAX_TILE = 1024
_MAX_OVERLAP = 256

log = logging.getLogger(__name__)


#: Errors that are the user's to fix: bad input or settings (ValueError, which ModelError and
#: MrcError are) and running out of memory.
_USER_ERRORS = (ValueError, MemoryError, torch.cuda.OutOfMemoryError)


def _denoise_job(
    volume: np.ndarray, model: str, kwargs: dict, info: dict | None = None, *, slab_centre: float | None = None,
    plan: ResamplePlan | None = None,
) -> Generator[tuple[int, int], None, Any]:
    """Run in the worker thread: yield ``(done, total)`` tiles, return the array or a :class:`_Failed`.

    Every exception becomes a :class:`_Failed`, shown by the main thread as one notification;
    unforeseen ones are also logged with their traceback. `info` is filled in by the core (number
    of NaN/Inf voxels replaced). With a resampling `plan` the data is denoised on the model's grid
    (:func:`~napari_cryoden.inference.resample.iter_denoise_resampled`; a preview:
    :func:`~napari_cryoden.inference.preview.iter_denoise_preview`).
    """
    try:
        if slab_centre is not None:
            return (yield from iter_denoise_preview(volume, model, slab_centre, plan=plan, info=info, **kwargs))
        if plan is not None and plan.resampled:
            return (yield from iter_denoise_resampled(volume, model, plan, info=info, **kwargs))
        return (yield from iter_denoise(volume, model, info=info, **kwargs))
    except Exception as exc:
        message = one_line(exc)
        if isinstance(exc, _USER_ERRORS) and not isinstance(exc, ValueError):
            message = f"out of memory ({message}); try a smaller tile size"
        elif not isinstance(exc, _USER_ERRORS):
            log.exception("denoising failed")
            message = f"{type(exc).__name__}: {message}"
        return _Failed(message)


def _preview_job(
    volume: np.ndarray, model: str, centre: float, kwargs: dict, info: dict | None = None,
    plan: ResamplePlan | None = None,
) -> Generator[tuple[int, int], None, Any]:
    """Run in the worker thread: the slab around `centre`, as ``(z_start, array)`` or a :class:`_Failed`."""
    return (yield from _denoise_job(volume, model, kwargs, info, slab_centre=centre, plan=plan))


def _drive(job: Generator) -> Generator[tuple[int, int], None, Any]:
    # The widget keeps `job` so that it can close it (and the core generator) after a cancel.
    return (yield from job)


def _layer_array(layer: Image) -> Any:
    """The array behind an image layer (level 0 of a multiscale one), without copying it."""
    return layer_array(layer, "denoising needs a grayscale tomogram")


def _grid(viewer: napari.viewer.Viewer):
    """The viewer's grid settings: ``viewer.canvas.grid`` (napari >= 0.9) or ``viewer.grid``."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None) if canvas is not None else None
    return grid if grid is not None else viewer.grid


class DenoiseWidget(QWidget):
    """Dock widget that denoises an image layer with a pretrained network.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    parent : QWidget, optional

    Attributes
    ----------
    image, model, device, precision : magicgui ComboBox
        `model` follows the layer (:func:`~napari_cryoden.models.default_model_for`) until the
        user picks one.
    resample : magicgui ComboBox
        "auto", "off" or "binned" (:mod:`napari_cryoden.inference.resample`).
    pixel_size : magicgui FloatSpinBox
        The layer's pixel size in Å; ``0`` takes the layer's scale (from the MRC header).
    pixel_info : magicgui Label
        What will be done, e.g. "layer 0.667 Å → model 5 Å, binned ×7.5".
    tile, overlap : magicgui SpinBox
        ``0`` tile and ``-1`` overlap mean automatic.
    side_by_side : magicgui CheckBox
        Mirrors the viewer's grid mode (``viewer.canvas.grid.enabled``, ``viewer.grid`` before
        napari 0.9).
    refresh_button, run_button, preview_button, cancel_button : magicgui PushButton
    progress_bar : magicgui ProgressBar
        Tiles done out of the total.
    worker : GeneratorWorker or None
        The running job, if any.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._model_cards: dict[str, dict] = {}
        self.worker = None
        self._job: Generator | None = None
        self._pending: dict[str, Any] | None = None
        self._pending_preview = False
        self._info: dict[str, Any] = {}
        self._activity: progress | None = None
        self._queue: list[dict[str, Any]] = []
        self._watched_window: QWidget | None = None
        self._model_picked = False  # the user chose a model: it no longer follows the layer
        self._setting_model = False

        self.image = ComboBox(label="image", choices=self._image_choices)
        self.model = ComboBox(label="model", choices=())
        self.refresh_button = PushButton(text="Refresh models", tooltip="Look again for built-in and user models")
        self.resample = ComboBox(
            label="resample", choices=RESAMPLE_CHOICES, value="auto",
            tooltip="When the layer's pixel size is more than 20 % from the model's: Fourier-bin the data to "
                    "the model's pixel size and pad the result back (auto), keep the result at the model's "
                    "pixel size (binned), or leave the data alone (off)",
        )
        self.pixel_size = FloatSpinBox(
            label="pixel size (Å)", value=0.0, min=0.0, max=10000.0, step=0.1,
            tooltip="Pixel size of the layer in Å; 0 = the layer's scale (the MRC header's voxel size)",
        )
        self.pixel_info = Label(value="")
        self.tile = SpinBox(
            label="tile", value=AUTO_TILE, min=0, max=_MAX_TILE, step=8,
            tooltip="Edge of the output block of each tile (voxels), a multiple of the network stride; 0 = automatic",
        )
        self.overlap = SpinBox(
            label="overlap", value=AUTO_OVERLAP, min=AUTO_OVERLAP, max=_MAX_OVERLAP,
            tooltip="Voxels of context on each tile side, read and discarded; -1 = automatic",
        )
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.precision = ComboBox(label="precision", choices=PRECISIONS, value="auto")
        self.side_by_side = CheckBox(
            text="side by side", value=bool(_grid(viewer).enabled),
            tooltip="Show the layers next to each other (grid mode)",
        )
        self.run_button = PushButton(text="Denoise")
        self.preview_button = PushButton(
            text="Preview",
            tooltip="Denoise only the slices around the displayed one (or the displayed 2D image) into "
                    "the layer '<name> preview'; press again after moving to update it",
        )
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress_bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = status_label()
        self._container = Container(
            widgets=[
                self.image, self.model, self.refresh_button, self.resample, self.pixel_size, self.pixel_info,
                self.tile, self.overlap, self.device,
                self.precision, self.side_by_side, self.run_button, self.preview_button, self.cancel_button,
                self.progress_bar, self.status,
            ]
        )
        layout = QVBoxLayout(self)
        layout.addWidget(self._container.native)
        layout.addStretch(1)

        self.refresh_button.changed.connect(self.refresh_models)
        self.model.changed.connect(self._on_model_changed)
        self.image.changed.connect(self._on_image_changed)
        self.resample.changed.connect(self._update_pixel_info)
        self.pixel_size.changed.connect(self._update_pixel_info)
        self.run_button.changed.connect(self.run)
        self.preview_button.changed.connect(self.preview)
        self.cancel_button.changed.connect(self.cancel)
        self.side_by_side.changed.connect(self._on_side_by_side)
        _grid(viewer).events.enabled.connect(self._on_grid_changed)
        watch_layers(viewer, self._on_layers_changed)
        self.refresh_models()

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return image_choices(self._viewer)

    def _on_layers_changed(self, event=None) -> None:
        follow_renames(event, self._on_layers_changed)
        self.image.reset_choices()

    def _set_model(self, name: str) -> None:
        """Select `name` without counting it as the user's choice."""
        self._setting_model = True
        try:
            self.model.value = name
        finally:
            self._setting_model = False

    def _on_model_changed(self, _value=None) -> None:
        if not self._setting_model:
            self._model_picked = True
        self._update_model_tooltip()
        self._update_pixel_info()

    def _layer_default_model(self) -> str | None:
        """The default model for the selected layer (3D for a tomogram, 2D for an image or a
        ``.mrcs`` stack), if it is available."""
        layer = self.image.value
        if layer is None:
            return DEFAULT_MODEL if DEFAULT_MODEL in self._model_cards else None
        name = default_model_for(layer.ndim, image_stack=is_image_stack(layer.metadata))
        return name if name in self._model_cards else None

    def _on_image_changed(self, _value=None) -> None:
        """The model follows the layer until the user has picked one."""
        default = self._layer_default_model()
        if not self._model_picked and default is not None and default != self.model.value:
            self._set_model(default)
        self._update_pixel_info()

    def refresh_models(self, _value=None) -> None:
        """Read the model registry again (new user models appear without a restart)."""
        current = self.model.value
        self._model_cards = available_models()
        names = list(self._model_cards)
        self._setting_model = True
        try:
            self.model.choices = names
            default = self._layer_default_model()
            if current in names and (self._model_picked or default is None):
                self.model.value = current
            elif default is not None:
                self.model.value = default
        finally:
            self._setting_model = False
        combo = self.model.native
        for i, name in enumerate(names):
            combo.setItemData(i, self._describe(name), Qt.ItemDataRole.ToolTipRole)
        self._update_model_tooltip()
        self._update_pixel_info()

    def resample_plan(self) -> ResamplePlan | None:
        """How the selected layer would be resampled for the selected model (None without both)."""
        layer, model = self.image.value, self.model.value
        card = self._model_cards.get(model) if model else None
        if layer is None or card is None or layer.rgb:
            return None
        shape = layer.data[0].shape if layer.multiscale else layer.data.shape
        return resample_plan(shape, layer.scale, layer.metadata, card, mode=self.resample.value,
                             pixel_size=self.pixel_size.value)

    def _update_pixel_info(self, _value=None) -> None:
        plan = self.resample_plan()
        self.pixel_info.value = plan.describe("layer") if plan is not None else ""
        self.pixel_info.tooltip = " ".join(plan.notes) if plan is not None else ""

    def _describe(self, name: str | None) -> str:
        if not name:
            return "No model found: train or install one, then press Refresh models"
        card = self._model_cards.get(name, {})
        parts = [card.get("description") or name]
        if card.get("architecture"):
            parts.append(f"architecture: {card['architecture']}")
        if card.get("voxel_size_A"):
            parts.append(f"trained at {card['voxel_size_A']} Å/voxel")
        return "\n".join(parts)

    def _update_model_tooltip(self, _value=None) -> None:
        self.model.tooltip = self._describe(self.model.value)

    def reset_choices(self, _event=None) -> None:
        """Refresh the layer and model lists (napari calls this when layers change)."""
        self.image.reset_choices()
        self.refresh_models()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        """Refresh the model list whenever the widget is shown; watch the window for closing."""
        self.refresh_models()
        self._watched_window = watch_window(self, self._watched_window)
        super().showEvent(event)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        """Stop the running job when the viewer's window closes."""
        if obj is self._watched_window and event.type() == QEvent.Type.Close:
            self.shutdown()
        return False

    def shutdown(self) -> None:
        """Stop the running job (after its current tile), drop queued jobs, add nothing.

        Called when the viewer's window closes. The worker's handlers are disconnected from the
        widget, which may be deleted soon, and the core generator is closed once the worker has
        let go of it.
        """
        self._queue.clear()
        worker, job = self.worker, self._job
        self.worker, self._job, self._pending = None, None, None
        self._activity = close_activity(self._activity)
        if worker is None:
            return
        disconnect(worker, {"yielded": self._on_yielded, "returned": self._on_returned,
                            "errored": self._on_errored, "finished": self._on_finished})

        def close_job() -> None:
            if job is not None:
                job.close()

        worker.finished.connect(close_job)
        worker.quit()

    # ------------------------------------------------------------------ grid
    def _on_side_by_side(self, value: bool) -> None:
        _grid(self._viewer).enabled = bool(value)
        self._viewer.reset_view()  # the grid's panels (or the single view) fit the canvas

    def _on_grid_changed(self, event=None) -> None:
        self.side_by_side.value = bool(_grid(self._viewer).enabled)

    # ------------------------------------------------------------------ run
    @property
    def is_running(self) -> bool:
        """True while a denoising job is in progress."""
        return self.worker is not None

    @property
    def queued(self) -> int:
        """Number of jobs waiting for the running one to finish."""
        return len(self._queue)

    def run(self, _value=None) -> None:
        """Denoise the selected layer in a worker thread (the Denoise button).

        While a job runs, the new job (this layer and these settings) is queued and starts when
        the running one ends. Problems with the settings show as an error notification; nothing
        is started or queued then.
        """
        self._submit(self._job_spec())

    def preview(self, _value=None) -> None:
        """Denoise the slab around the displayed slice into ``"<name> preview"`` (the Preview button).

        ±16 slices (:data:`~napari_cryoden.inference.preview.PREVIEW_HALF_DEPTH`) with a 3D model,
        the displayed slice with a 2D model, the whole image for a 2D layer; queued like Denoise
        while a job runs.
        """
        self._submit(self._job_spec(preview=True))

    def _submit(self, spec: dict[str, Any] | None) -> None:
        if spec is None:
            return
        if self.is_running:
            self._queue.append(spec)
            self.status.value = f"{self.status.value.split(' (')[0]} ({len(self._queue)} queued)"
            return
        self._start(spec)

    def _displayed_index(self, layer: Image) -> float:
        """Index along the layer's first axis of the slice the viewer shows."""
        point = np.asarray(self._viewer.dims.point, dtype=float)
        data = np.asarray(layer.world_to_data(point[-layer.ndim:] if point.size >= layer.ndim else point))
        return float(data[0]) if data.size else 0.0

    def _model_ndim(self, model: str) -> int | None:
        return model_ndim(self._model_cards.get(model))

    def _job_spec(self, *, preview: bool = False) -> dict[str, Any] | None:
        layer = self.image.value
        model = self.model.value
        if layer is None:
            show_error("Denoise: no image layer selected")
            return None
        if not model:
            show_error("Denoise: no model available; train or install one, then press Refresh models")
            return None
        try:
            kwargs = denoise_kwargs(
                tile=self.tile.value, overlap=self.overlap.value,
                device=self.device.value, precision=self.precision.value,
            )
            volume = _layer_array(layer)
        except ValueError as exc:
            show_error(f"Denoise: {exc}")
            return None
        source = layer_source(layer.metadata)
        if is_image_stack(layer.metadata):
            kwargs["image_stack"] = True
        if slice_by_slice(self._model_ndim(model), np.ndim(volume), image_stack=bool(kwargs.get("image_stack"))):
            show_info(f"Denoise: {model!r} is a 2D model; {layer.name!r} is denoised slice by slice along Z")
        try:
            plan = self.resample_plan()
        except ValueError as exc:
            show_error(f"Denoise: {exc}")
            return None
        for note in plan.notes if plan is not None else ():
            show_info(f"Denoise: {layer.name!r}: {note}")
        scale = output_scale(layer.scale, plan)  # the model's when binned, the one typed in, or the layer's
        spec = {"volume": volume, "model": model, "kwargs": kwargs, "name": layer.name, "preview": preview,
                "plan": plan}
        if preview:
            spec["centre"] = self._displayed_index(layer)
            spec["pending"] = {"name": layer.name, "scale": scale, "translate": tuple(layer.translate),
                               "contrast_limits": tuple(layer.contrast_limits), "model": model}
        else:
            spec["pending"] = denoised_layer_kwargs(
                layer.name, scale=scale, translate=layer.translate, contrast_limits=layer.contrast_limits,
                model=model, source_path=source, input_metadata=layer.metadata,
                voxel_size_known=plan.known if plan is not None else None,
            )
        return spec

    def _start(self, spec: dict[str, Any]) -> None:
        model, name = spec["model"], spec["name"]
        self._pending = spec["pending"]
        self._pending_preview = spec["preview"]
        self._info = {}
        if spec["preview"]:
            self._job = _preview_job(spec["volume"], model, spec["centre"], spec["kwargs"], self._info, spec.get("plan"))
        else:
            self._job = _denoise_job(spec["volume"], model, spec["kwargs"], self._info, plan=spec.get("plan"))
        self.worker = create_worker(
            _drive, self._job, _start_thread=False,
            _connect={
                "yielded": self._on_yielded, "returned": self._on_returned,
                "errored": self._on_errored, "finished": self._on_finished,
            },
        )
        what = "Previewing" if spec["preview"] else "Denoising"
        self._activity = progress(total=0, desc=f"{what} {name}")
        self.progress_bar.max, self.progress_bar.value = 1, 0
        self.status.value = f"{what.lower()} {name} with {model}…"
        self.cancel_button.enabled = True
        self.worker.start()

    def cancel(self, _value=None) -> None:
        """Stop the running job after the current tile and drop queued ones (the Cancel button);
        nothing is added."""
        self._queue.clear()
        if self.worker is not None:
            self.worker.quit()
            self.cancel_button.enabled = False
            self.status.value = "cancelling…"

    def _on_yielded(self, value: tuple[int, int]) -> None:
        done, total = value
        self.progress_bar.max = max(int(total), 1)
        self.progress_bar.value = min(int(done), self.progress_bar.max)
        advance(self._activity, done, total)

    def _on_returned(self, result: Any) -> None:
        pending, self._pending = self._pending, None
        if isinstance(result, _Failed):
            self.status.value = "failed"
            show_error(f"Denoise: {result.message}")
            return
        if result is None or pending is None:
            return
        source = pending["name"] if self._pending_preview else pending["metadata"]["denoised_from"]
        if self._info.get("nonfinite"):
            show_warning(
                f"Denoise: {source!r} holds {self._info['nonfinite']} NaN/Inf "
                f"voxels; they were replaced by the median {self._info['nonfinite_value']:g} before denoising"
            )
        if self._pending_preview:
            self._show_preview(pending, *result)
            return
        pending = {**pending, "contrast_limits": contrast_limits(result)}  # its own, not the input's
        self._viewer.add_image(result, **pending)
        if self.side_by_side.value:
            _grid(self._viewer).enabled = True
            self._viewer.reset_view()  # both panels in view
        self.status.value = f"added {pending['name']!r}"

    def _show_preview(self, pending: dict[str, Any], z_start: int, slab: np.ndarray) -> None:
        kw = preview_layer_kwargs(
            pending["name"], scale=pending["scale"], translate=pending["translate"],
            contrast_limits=pending["contrast_limits"], model=pending["model"], z_start=z_start,
            slab_ndim=slab.ndim,
        )
        name = kw["name"]
        existing = self._viewer.layers[name] if name in self._viewer.layers else None
        if isinstance(existing, Image) and existing.ndim == slab.ndim:
            existing.data = slab
            existing.scale, existing.translate = kw["scale"], kw["translate"]
            existing.metadata = {**existing.metadata, **kw["metadata"]}
            existing.refresh()
        else:
            if existing is not None:
                self._viewer.layers.remove(existing)
            self._viewer.add_image(slab, **kw)
        z_end = z_start + (slab.shape[0] if slab.ndim == 3 else 1)
        self.status.value = f"preview of {pending['name']!r}" + (
            f", slices {z_start}-{z_end - 1}" if slab.ndim == 3 else "")

    def _on_errored(self, exc: BaseException) -> None:
        # The job turns exceptions into _Failed; anything else napari reports itself.
        self._pending = None
        self.status.value = f"failed: {type(exc).__name__}"

    def _on_finished(self) -> None:
        worker, self.worker = self.worker, None
        job, self._job = self._job, None
        if worker is not None and worker.abort_requested:
            if job is not None:
                job.close()  # the worker thread has let go of it; this closes the core generator
            self._pending = None
            self.status.value = "cancelled"
            self.progress_bar.value = 0
        self._activity = close_activity(self._activity)
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        if self._queue:
            self._start(self._queue.pop(0))
