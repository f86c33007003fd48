"""The Train / fine-tune dock widget: image layers + settings -> training thread -> loss plot, preview, model.

The widget is thin. The plain functions of this module decide everything that is not drawing:
:func:`input_roles` (which layers a mode needs), :func:`finetune_config` (widget values ->
:class:`~napari_cryoden.training.finetune.FineTuneConfig`), :func:`check_model_name`,
:func:`default_val_slab` and :func:`val_slab_rectangles` (the held-out slab and its outline),
:func:`preview_slice` (denoise the displayed slice with the current weights) and
:func:`card_extra` (what the model card records about the data).

Before anything starts, the settings become a frozen
:class:`~napari_cryoden.training.finetune.FineTuneConfig` (checked when built) and go through
:func:`~napari_cryoden.training.finetune.check_settings` in the GUI thread, so bad settings give
one error notification and no worker. Training then runs as a generator in a napari
``GeneratorWorker`` (``create_worker``, as the Denoise widget runs
:func:`~napari_cryoden.inference.iter_denoise`): the worker thread iterates
:func:`~napari_cryoden.training.finetune.iter_fine_tune`, passes its
:class:`~napari_cryoden.training.finetune.TrainEvent` progress reports on, and turns each
:class:`~napari_cryoden.training.finetune.PreviewWeights` into a denoised slice there (a preview
that fails switches previews off for the run, with a warning). Everything comes back through the
worker's ``yielded`` signal, whose main-thread handler draws the loss curves and the progress
bar, updates the preview layer or shows the warning; ``returned`` brings the
:class:`~napari_cryoden.training.finetune.FineTuneResult` (or a one-line failure). Cancel sets a
flag that the training loop polls between steps: it validates, checkpoints and returns the best
validation checkpoint, which can still be saved. A finished run is saved at once under the
chosen name (:func:`~napari_cryoden.training.export.save_finetuned`); the Denoise widgets then
re-read the model registry, so the new model is listed without a restart. Closing the viewer's
window (or :meth:`TrainWidget.shutdown`) stops the training thread after its current step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from contextlib import closing
from typing import Any, Generator

import napari.viewer
import numpy as np
import torch
from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, ProgressBar, PushButton, SpinBox
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QApplication, QVBoxLayout, QWidget

from ..device import is_out_of_memory
from ..models import ARCHITECTURES, available_models, default_model_for
from ..training.export import save_finetuned
from ..training.finetune import (
    FineTuneConfig, FineTuneResult, PreviewWeights, TrainEvent, check_settings, default_patch, iter_fine_tune,
    validation_axis,
)
from ._common import (
    Failed as _Failed,
    advance,
    close_activity,
    disconnect,
    follow_renames,
    image_choices,
    layer_array,
    one_line as _one_line,
    status_label,
    watch_layers,
    watch_window,
)
from .denoise_settings import DEVICES, PRECISIONS
from .train_settings import (
    ADVERSARIAL, DEFAULT_NAME, LOSSES, MODES, SCRATCH, _model_geometry, card_extra, check_save_name, default_val_slab,
    finetune_config, input_roles, preview_slice, scratch_arch_kwargs, suggest_name, val_slab_rectangles,
)

__all__ = ["TrainWidget"]

_SLAB_COLOR = "orange"

log = logging.getLogger(__name__)


def _layer_array(layer: Image) -> Any:
    """The array behind an image layer (level 0 of a multiscale one), without copying it."""
    return layer_array(layer, "training needs grayscale data")


# ================================================================== training thread
@dataclasses.dataclass(frozen=True)
class _PreviewImage:
    """A preview computed in the training thread: slice `z` denoised with the weights of `step`."""

    z: int
    step: int
    image: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Note:
    """A warning for the user, from the training thread."""

    message: str


@dataclasses.dataclass(eq=False)
class _Run:
    """One training run: what the worker needs, and the state it shares with the GUI thread.

    The GUI thread writes only ``preview_z`` and sets ``cancel``/``detached``; the training thread
    reads them, and writes ``step`` and ``preview_failed``. Nothing here refers to a layer or a
    widget.
    """

    source: Any
    target: Any
    config: FineTuneConfig
    model: str | None
    architecture: str | None
    arch_kwargs: dict | None
    ndim: int
    context: int
    name: str
    extra: dict
    preview_z: int = 0
    step: int = 0
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    detached: bool = False
    preview_failed: bool = False

    def preview(self, weights: PreviewWeights) -> _PreviewImage | _Note | None:
        """Denoise the displayed slice with `weights` (in the training thread).

        None when previews are off (the widget let go of the run, a cancel is pending, or an
        earlier preview failed); a :class:`_Note` when this one failed, which switches previews
        off for the run (a failed preview must not end the training).
        """
        if self.detached or self.preview_failed or self.cancel.is_set():
            return None
        z = int(self.preview_z)
        try:
            with torch.no_grad():
                image = preview_slice(self.source, weights.module, z, ndim=self.ndim, context=self.context)
        except Exception as exc:
            log.warning("preview failed", exc_info=True)
            self.preview_failed = True
            return _Note(f"preview failed and is switched off for this run: {_one_line(exc)}")
        return _PreviewImage(z, int(weights.step), image)

    def events(self) -> Generator[TrainEvent | _PreviewImage | _Note, None, FineTuneResult]:
        """Train (in the worker thread): yield the :class:`TrainEvent` progress reports of
        :func:`~napari_cryoden.training.finetune.iter_fine_tune` and the previews computed from
        its :class:`PreviewWeights`; return its FineTuneResult. Raises what it raises."""
        job = iter_fine_tune(
            self.source,  # the layer's array: a memmap is read patch by patch
            self.target,
            self.config,
            model=self.model,
            architecture=self.architecture,
            arch_kwargs=self.arch_kwargs,
            cancel=self.cancel.is_set,
        )
        with closing(job):
            while True:
                try:
                    event = next(job)
                except StopIteration as stop:
                    return stop.value
                if isinstance(event, PreviewWeights):
                    shown = self.preview(event)
                    if shown is not None:
                        yield shown
                else:
                    self.step = int(event.step)
                    yield event


def _train_job(run: _Run) -> Generator[TrainEvent | _PreviewImage | _Note, None, Any]:
    """Run in the worker thread: yield what :meth:`_Run.events` yields; return the FineTuneResult,
    or a :class:`_Failed` (one line) for any exception, shown by the GUI thread as one notification;
    unforeseen ones are also logged with their traceback."""
    try:
        return (yield from run.events())
    except Exception as exc:
        message = _one_line(exc)
        if is_out_of_memory(exc):
            message = f"out of memory ({message}); try a smaller patch or batch size"
        elif not isinstance(exc, ValueError):
            log.exception("training failed")
            message = f"{type(exc).__name__}: {message}"
        return _Failed(message)


def _drive(job: Generator) -> Generator[Any, None, Any]:
    # The widget keeps `job` so that it can close it (and the training generator) after shutdown.
    return (yield from job)


def _refresh_denoise_widgets() -> int:
    """Make every open Denoise widget re-read the model registry; returns how many there were."""
    from .denoise import DenoiseWidget

    app = QApplication.instance()
    count = 0
    for widget in app.allWidgets() if app is not None else ():
        if isinstance(widget, DenoiseWidget):
            widget.refresh_models()
            count += 1
    return count


# ================================================================== the widget
class TrainWidget(QWidget):
    """Dock widget that trains or fine-tunes a denoising network on the user's data.

    Parameters
    ----------
    viewer : napari.viewer.Viewer or napari.components.ViewerModel
    parent : QWidget, optional

    Attributes
    ----------
    mode : magicgui ComboBox
        ``"n2n"`` (even/odd halves), ``"supervised"`` (noisy + clean reference) or ``"n2v"``
        (one volume, blind-spot).
    source, target : magicgui ComboBox
        Image layers; labelled and shown according to the mode (:func:`input_roles`).
    loss, adversarial : magicgui ComboBox
        Adversarial term (supervised mode only): ``"none"``, ``"gan"``, ``"wgangp"``.
    start, architecture : magicgui ComboBox
        Registry model to fine-tune, or :data:`SCRATCH` with an architecture of
        :data:`~napari_cryoden.models.ARCHITECTURES`.
    channels, patch, batch, steps, val_start, val_stop, val_every, preview_every : magicgui SpinBox
        ``preview_every`` 0 means no preview.
    rampdown, max_grad_norm : magicgui FloatSpinBox
        Fraction of the steps with a half-cosine learning-rate ramp-down (0 = constant rate) and
        the global gradient norm to clip to (0 = no clipping).
    lr, name : magicgui LineEdit
    device, precision : magicgui ComboBox
    train_button, cancel_button, save_button : magicgui PushButton
    progress_bar : magicgui ProgressBar
        Steps done out of the total.
    status : magicgui Label
    figure, canvas, axes : matplotlib Figure, FigureCanvasQTAgg, Axes
        The loss plot; ``train_line`` and ``val_line`` are its two curves.
    worker : GeneratorWorker or None
        The running training, if any: a napari worker thread iterating
        :func:`~napari_cryoden.training.finetune.iter_fine_tune`.
    result : FineTuneResult or None
        The last finished or cancelled run (best checkpoint), until it is saved.
    saved_path : pathlib.Path or None
        Weights file of the last saved model.
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self.worker = None
        self.result = None
        self.saved_path = None
        self._run: _Run | None = None
        self._job: Generator | None = None
        self._result_run: _Run | None = None
        self._activity: progress | None = None
        self._slab_layer: Shapes | None = None
        self._slab_for: Image | None = None
        self._updating = False
        self._watched_window: QWidget | None = None
        self._scratch_chosen = False
        self._name_when_done: str | None = None
        self._start_picked = False  # the user chose the starting model: it no longer follows the data
        self._setting_start = False
        self._val_axis = 0
        self._auto_slab: tuple[int, int] | None = None
        self._source_layer: Image | None = None
        self._train_points: tuple[list[float], list[float]] = ([], [])
        self._val_points: tuple[list[float], list[float]] = ([], [])

        self.mode = ComboBox(label="mode", choices=MODES, value="n2n",
                             tooltip="Noise2Noise: two independent halves (even/odd frames or tilts) of the same "
                                     "tomogram; Supervised: noisy input and clean reference; Noise2Void: one "
                                     "volume, blind-spot training")
        self.source = ComboBox(label="even half", choices=self._image_choices)
        self.target = ComboBox(label="odd half", choices=self._image_choices)
        self.loss = ComboBox(label="loss", choices=LOSSES, value="l2")
        self.adversarial = ComboBox(label="adversarial", choices=ADVERSARIAL, value="none",
                                    tooltip="Add a discriminator (GAN) or a Wasserstein critic with gradient "
                                            "penalty (WGAN-GP) to the content loss")
        self.start = ComboBox(label="start from", choices=(SCRATCH,),
                              tooltip="A model of the registry to fine-tune, or a new network")
        self.architecture = ComboBox(label="architecture", choices=tuple(ARCHITECTURES))
        self.channels = SpinBox(label="channels", value=48, min=1, max=256,
                                tooltip="Width of the new network (feature maps per layer)")
        self.patch = SpinBox(label="patch", value=0, min=0, max=512, step=8,
                             tooltip="Edge of the training patches in voxels (a multiple of the network stride); "
                                     "0 = automatic: 48 (3D) or 64 (2D), less for small data")
        self.batch = SpinBox(label="batch", value=4, min=1, max=256)
        self.steps = SpinBox(label="steps", value=200, min=1, max=1_000_000)
        self.lr = LineEdit(label="learning rate", value="1e-4", tooltip="Adam learning rate, e.g. 1e-4")
        self.rampdown = FloatSpinBox(label="ramp-down", value=0.0, min=0.0, max=1.0, step=0.05,
                                     tooltip="Fraction of the steps at the end over which the learning rate "
                                             "ramps down to 0 (half cosine, Lehtinen et al. 2018); 0 = constant")
        self.max_grad_norm = FloatSpinBox(label="clip gradients", value=0.0, min=0.0, max=1e6, step=0.1,
                                          tooltip="Clip the global gradient norm to this value "
                                                  "(Pascanu et al. 2013); 0 = no clipping")
        self.val_start = SpinBox(label="validation from", value=0, min=0, max=100_000,
                                 tooltip="First row (Y) or column (X), the longer of the two, held out for "
                                         "validation")
        self.val_stop = SpinBox(label="validation to", value=0, min=0, max=100_000,
                                tooltip="Row or column after the last one held out for validation (exclusive)")
        self.val_every = SpinBox(label="validate every", value=20, min=1, max=1_000_000,
                                 tooltip="Steps between validation losses (and checkpoints)")
        self.preview_every = SpinBox(label="preview every", value=50, min=0, max=1_000_000,
                                     tooltip="Steps between previews of the displayed slice; 0 = no preview")
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.precision = ComboBox(label="precision", choices=PRECISIONS, value="auto")
        self.name = LineEdit(label="save as", value=suggest_name(DEFAULT_NAME, available_models()),
                             tooltip="Name of the new model in the registry (letters, digits, '.', '_', '-')")
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="Stop after the current step and keep the best checkpoint")
        self.save_button = PushButton(text="Save model", enabled=False,
                                      tooltip="Save the best checkpoint of the last run under the chosen name")
        self.progress_bar = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = status_label()
        self.status.native.setWordWrap(True)
        self._container = Container(widgets=[
            self.mode, self.source, self.target, self.loss, self.adversarial, self.start, self.architecture,
            self.channels, self.patch, self.batch, self.steps, self.lr, self.rampdown, self.max_grad_norm,
            self.val_start, self.val_stop,
            self.val_every, self.preview_every, self.device, self.precision, self.name,
        ])
        self._buttons = Container(widgets=[self.train_button, self.cancel_button, self.save_button],
                                  layout="horizontal", labels=False)
        self._progress = Container(widgets=[self.progress_bar, self.status])

        self.figure = Figure(figsize=(4.0, 2.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.axes = self.figure.add_subplot()
        (self.train_line,) = self.axes.plot([], [], "-", label="train")
        (self.val_line,) = self.axes.plot([], [], "o-", label="validation", markersize=3)
        self.axes.set_xlabel("step")
        self.axes.set_ylabel("loss")
        self.axes.legend(loc="upper right", fontsize="small")
        self.axes.set_visible(False)  # no axes with made-up ranges before the first loss

        layout = QVBoxLayout(self)
        layout.addWidget(self._container.native)
        layout.addWidget(self._buttons.native)
        layout.addWidget(self._progress.native)
        layout.addWidget(self.canvas, stretch=1)

        self.mode.changed.connect(self._on_mode)
        self.start.changed.connect(self._on_start)
        self.architecture.changed.connect(self._on_start)
        self.source.changed.connect(self._on_source)
        self.patch.changed.connect(self._on_patch)
        self.val_start.changed.connect(self._update_slab_layer)
        self.val_stop.changed.connect(self._update_slab_layer)
        self.train_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self.save)
        viewer.dims.events.current_step.connect(self._on_dims)
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        watch_layers(viewer, self._on_layers_changed)

        self.refresh_models()
        self._on_mode()
        self._on_start()
        self._on_source()

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(name, layer) for name, layer in image_choices(self._viewer)
                if not (layer.metadata or {}).get("cryoden_preview")]

    def _on_layers_changed(self, event=None) -> None:
        follow_renames(event, self._on_layers_changed)
        if self._updating:
            return
        self.source.reset_choices()
        self.target.reset_choices()
        self._pick_distinct_target()

    def _pick_distinct_target(self) -> None:
        """Offer a different layer as target than as source when there is one."""
        if self.target.value is not None and self.target.value is self.source.value:
            others = [layer for _, layer in self._image_choices() if layer is not self.source.value]
            if others:
                self.target.value = others[0]

    def refresh_models(self, _value=None) -> None:
        """Read the model registry again for the "start from" list (keeps the current choice)."""
        current = self.start.value
        names = [SCRATCH, *available_models()]
        self._setting_start = True
        try:
            self.start.choices = names
            if current in names and (current != SCRATCH or self._scratch_chosen) and (
                    self._start_picked or current == self._default_start(names)):
                self.start.value = current
            else:
                self.start.value = self._default_start(names)
        finally:
            self._setting_start = False

    def _default_start(self, names) -> str:
        """The default model for the source layer's data (2D micrograph or 3D tomogram), if there."""
        layer = self.source.value
        ndim = layer.ndim if layer is not None else 3
        default = default_model_for(ndim)
        return default if default in names else SCRATCH

    def reset_choices(self, _event=None) -> None:
        """Refresh the layer and model lists (napari calls this when layers change)."""
        self._on_layers_changed()
        self.refresh_models()

    # ------------------------------------------------------------------ visibility
    def _on_mode(self, _value=None) -> None:
        source_label, target_label = input_roles(self.mode.value)
        self.source.label = source_label
        self.target.visible = target_label is not None
        if target_label is not None:
            self.target.label = target_label
        self.adversarial.visible = self.mode.value == "supervised"
        self._pick_distinct_target()

    def _on_start(self, _value=None) -> None:
        scratch = self.start.value == SCRATCH
        if _value is not None and not self._setting_start:
            self._scratch_chosen = scratch  # the user's choice survives a refresh of the list
            self._start_picked = True
        self.architecture.visible = scratch
        spec = ARCHITECTURES.get(self.architecture.value)
        self.channels.visible = scratch and spec is not None and "ch" in spec.kwargs

    def input_visibility(self) -> dict[str, bool]:
        """Which optional inputs the current mode and starting point show (for tests and docs)."""
        return {
            "target": not self.target.native.isHidden(),
            "adversarial": not self.adversarial.native.isHidden(),
            "architecture": not self.architecture.native.isHidden(),
            "channels": not self.channels.native.isHidden(),
        }

    # ------------------------------------------------------------------ validation slab
    def _on_source(self, _value=None) -> None:
        layer = self.source.value
        if layer is None or layer is self._slab_for:
            self._update_slab_layer()
            return
        try:
            shape = _layer_array(layer).shape
        except ValueError:
            return
        self._slab_for = layer
        if not self._start_picked:
            self.refresh_models()  # the starting model follows the data: 2D or 3D default
        self._set_default_slab(shape)
        self._pick_distinct_target()

    def _patch_for(self, shape) -> int:
        """The patch edge training will use on data of `shape`: the spin box, or automatic."""
        if self.patch.value:
            return int(self.patch.value)
        model = None if self.start.value in (None, SCRATCH) else self.start.value
        arch = self.architecture.value if model is None else available_models().get(model, {}).get("architecture")
        spec = ARCHITECTURES.get(arch)
        stride, ndim = (spec.stride, spec.ndim) if spec is not None else (8, len(shape))
        return default_patch(shape, stride, ndim)

    def _set_default_slab(self, shape) -> None:
        self._val_axis = validation_axis(shape)
        n = int(shape[self._val_axis])
        start, stop = default_val_slab(n, self._patch_for(shape))
        with self._guard():
            self.val_start.max = self.val_stop.max = n
            self.val_start.value, self.val_stop.value = start, stop
        self._auto_slab = (start, stop)
        self._update_slab_layer()

    def _on_patch(self, _value=None) -> None:
        """A new patch size moves the default slab along, not one the user chose."""
        layer = self.source.value
        if layer is None or (self.val_start.value, self.val_stop.value) != self._auto_slab:
            return
        try:
            self._set_default_slab(_layer_array(layer).shape)
        except ValueError:
            pass

    def _guard(self):
        widget = self

        class _G:
            def __enter__(self):
                self.prev = widget._updating
                widget._updating = True

            def __exit__(self, *exc):
                widget._updating = self.prev
                return False

        return _G()

    def _update_slab_layer(self, _value=None) -> None:
        """Draw the validation slab of the source layer as a Shapes layer (kept in step)."""
        if self._updating:
            return
        layer = self.source.value
        if layer is None:
            return
        try:
            shape = _layer_array(layer).shape
        except ValueError:
            return
        if len(shape) not in (2, 3):
            return
        rects = val_slab_rectangles(shape, (self.val_start.value, self.val_stop.value), self._val_axis)
        features = {"label": ["validation"] * len(rects)}
        slab = self._slab_layer if self._slab_layer is not None and self._slab_layer in self._viewer.layers else None
        with self._guard():
            if slab is not None and slab.ndim != len(shape):
                self._viewer.layers.remove(slab)
                slab = None
            if slab is None:
                active = self._viewer.layers.selection.active
                slab = self._viewer.add_shapes(
                    rects or None, ndim=len(shape), shape_type="rectangle", name="validation slab",
                    edge_color=_SLAB_COLOR, face_color="transparent", edge_width=1, opacity=0.6,
                    scale=layer.scale, translate=layer.translate, features=features,
                    text={"string": "{label}", "anchor": "upper_left", "color": _SLAB_COLOR, "size": 9},
                    metadata={"cryoden_validation_slab": True},
                )
                slab.text.visible = self._viewer.dims.ndisplay == 2
                if active is not None and active in self._viewer.layers:
                    self._viewer.layers.selection.active = active
                self._slab_layer = slab
            else:
                slab.scale, slab.translate = layer.scale, layer.translate
                slab.data = []
                if rects:
                    slab.add_rectangles(rects, edge_color=_SLAB_COLOR, face_color="transparent")
                slab.features = features
            slab.metadata["slab"] = (int(self.val_start.value), int(self.val_stop.value))

    def _on_ndisplay(self, _event=None) -> None:
        """The slab's label marks each held-out slice in 2D; in 3D the stacked labels would pile up."""
        slab = self._slab_layer
        if slab is not None and slab in self._viewer.layers:
            slab.text.visible = self._viewer.dims.ndisplay == 2

    # ------------------------------------------------------------------ window
    def showEvent(self, event) -> None:  # noqa: N802 (Qt API)
        """Refresh the model list whenever the widget is shown; watch the window for closing."""
        self.refresh_models()
        self._watch_window()
        super().showEvent(event)

    def _watch_window(self) -> None:
        """Install the close watcher on the top-level window (the viewer's, once docked)."""
        self._watched_window = watch_window(self, self._watched_window)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        """Stop the training when the viewer's window closes."""
        watched = getattr(self, "_watched_window", None)  # None while Python tears the widget down
        if watched is not None and obj is watched and event.type() == QEvent.Type.Close:
            self.shutdown()
        return False

    def shutdown(self) -> None:
        """Stop the training (after its current step) and disconnect it from the widget.

        Called when the viewer's window closes. The widget's handlers are disconnected from the
        worker; the training loop sees the cancel flag at its next poll and the worker stops at
        the next event (napari's ``quit``), then the training generator is closed; its result is
        dropped.
        """
        run, worker, job = self._run, self.worker, self._job
        self._run, self.worker, self._job = None, None, None
        self._activity = close_activity(self._activity)
        if run is not None:
            run.detached = True
            run.cancel.set()
        if worker is not None:
            disconnect(worker, {"yielded": self._on_yielded, "returned": self._on_returned,
                                "errored": self._on_errored, "finished": self._on_finished})

            def close_job() -> None:
                if job is not None:
                    job.close()  # the worker thread has let go of it: end the training generator

            worker.finished.connect(close_job)
            worker.quit()

    # ------------------------------------------------------------------ run
    @property
    def is_running(self) -> bool:
        """True while a training run is in progress."""
        return self.worker is not None

    def _current_z(self, layer: Image | None = None) -> int:
        """Index along axis 0 of the source layer of the slice the viewer displays."""
        layer = layer if layer is not None else self.source.value
        if layer is None or layer.ndim < 3:
            return 0
        point = np.asarray(self._viewer.dims.point, float)[-layer.ndim:]
        z = float(np.asarray(layer.world_to_data(point))[0])
        n = _layer_array(layer).shape[0]
        return int(np.clip(round(z), 0, n - 1))

    def _on_dims(self, _event=None) -> None:
        run = self._run
        if run is not None:
            try:
                run.preview_z = self._current_z(self._source_layer)
            except (ValueError, IndexError):
                pass

    def _fail(self, message: str) -> None:
        self.status.value = message
        show_error(f"Train: {message}")

    def run(self, _value=None) -> None:
        """Check the settings and start training in a worker thread (the Train button).

        Bad settings (missing layers, halves of different shapes, a patch larger than the data,
        a network of the wrong dimensionality, an empty or taken name…) give one error
        notification and start nothing.
        """
        if self.is_running:
            self._fail("a training run is already in progress; cancel it first")
            return
        try:
            run = self._make_run()
        except ValueError as exc:
            self._fail(_one_line(exc))
            return
        self._start(run)

    def _make_run(self) -> _Run:
        """Everything the worker needs, checked in the GUI thread; ValueError for bad settings."""
        mode = self.mode.value
        source_label, target_label = input_roles(mode)
        source_layer = self.source.value
        target_layer = self.target.value if target_label is not None else None
        if source_layer is None:
            raise ValueError(f"choose the {source_label} layer")
        if target_label is not None:
            if target_layer is None:
                raise ValueError(f"choose the {target_label} layer")
            if target_layer is source_layer:
                raise ValueError(f"the {source_label} and the {target_label} must be two different layers")
        name = check_save_name(self.name.value, available_models())
        config = finetune_config(
            mode=mode, loss=self.loss.value, adversarial=self.adversarial.value, patch=self.patch.value,
            batch=self.batch.value, steps=self.steps.value, lr=self.lr.value,
            val_slab=(self.val_start.value, self.val_stop.value), val_axis=self._val_axis,
            val_every=self.val_every.value,
            preview_every=self.preview_every.value, device=self.device.value, precision=self.precision.value,
            rampdown=self.rampdown.value, max_grad_norm=self.max_grad_norm.value,
        )
        source = _layer_array(source_layer)
        target = _layer_array(target_layer) if target_layer is not None else None
        model = None if self.start.value in (None, SCRATCH) else self.start.value
        architecture = self.architecture.value if model is None else None
        arch_kwargs = scratch_arch_kwargs(architecture, self.channels.value) if model is None else None
        check_settings(config, source, target, model=model, architecture=architecture, arch_kwargs=arch_kwargs)
        ndim, context = _model_geometry(model, architecture)
        layers = [(source_label, source_layer)] + ([(target_label, target_layer)] if target_layer is not None else [])
        extra = card_extra(mode, [(role, lyr.name, _layer_array(lyr).shape, tuple(lyr.scale), lyr.metadata)
                                  for role, lyr in layers])
        run = _Run(source=source, target=target, config=config, model=model, architecture=architecture,
                   arch_kwargs=arch_kwargs, ndim=ndim, context=context, name=name, extra=extra)
        run.preview_z = self._current_z(source_layer)
        self._source_layer = source_layer
        return run

    def _start(self, run: _Run) -> None:
        self._run = run
        self.result = None
        self._result_run = None
        self.save_button.enabled = False
        self._train_points = ([], [])
        self._val_points = ([], [])
        self._redraw()
        self._job = _train_job(run)
        self.worker = create_worker(
            _drive, self._job, _start_thread=False,
            _connect={"yielded": self._on_yielded, "returned": self._on_returned, "errored": self._on_errored,
                      "finished": self._on_finished},
        )
        steps = run.config.steps
        self._activity = progress(total=steps, desc=f"Training {run.name}")
        self.progress_bar.max, self.progress_bar.value = max(steps, 1), 0
        start = run.model or f"a new {run.architecture}"
        self.status.value = f"training {run.name} from {start}…"
        self.train_button.enabled = False
        self.cancel_button.enabled = True
        self._watch_window()  # also when the dock was never shown
        self.worker.start()

    def cancel(self, _value=None) -> None:
        """Stop training after the current step and keep the best checkpoint (the Cancel button)."""
        if self._run is not None:
            self._run.cancel.set()
            self.cancel_button.enabled = False
            self.status.value = "cancelling after the current step…"

    # ------------------------------------------------------------------ reports (GUI thread)
    def _on_yielded(self, value: TrainEvent | _PreviewImage | _Note) -> None:
        """What the training thread yielded: a progress report, a preview or a note."""
        if isinstance(value, TrainEvent):
            self._on_event(value)
        elif isinstance(value, _PreviewImage):
            self._on_preview(value)
        elif isinstance(value, _Note):
            self._on_note(value.message)

    def _on_event(self, event: TrainEvent) -> None:
        if event.train_loss is not None and math.isfinite(event.train_loss):
            self._train_points[0].append(event.step)
            self._train_points[1].append(float(event.train_loss))
        if event.val_loss is not None and math.isfinite(event.val_loss):
            self._val_points[0].append(event.step)
            self._val_points[1].append(float(event.val_loss))
        self._redraw()
        total = max(int(event.steps), 1)
        self.progress_bar.max = total
        self.progress_bar.value = min(int(event.step), total)
        advance(self._activity, int(event.step), total)
        parts = [f"step {event.step}/{event.steps}"]
        if event.train_loss is not None and math.isfinite(event.train_loss):
            parts.append(f"train {event.train_loss:.4g}")
        if event.best_val is not None:
            parts.append(f"best validation {event.best_val:.4g}")
        parts.append(f"{event.seconds:.0f} s")
        self.status.value = " · ".join(parts)

    def _redraw(self) -> None:
        self.train_line.set_data(*self._train_points)
        self.val_line.set_data(*self._val_points)
        values = self._train_points[1] + self._val_points[1]
        self.axes.set_visible(bool(values))
        scale = "log" if values and min(values) > 0 else "linear"
        if self.axes.get_yscale() != scale:
            self.axes.set_yscale(scale)
        self.axes.relim()
        self.axes.autoscale_view()
        self.canvas.draw_idle()

    def _on_preview(self, preview: _PreviewImage) -> None:
        z, step, image = preview.z, preview.step, preview.image
        run = self._run
        source = self._source_layer
        if run is None or source is None:
            return
        name = f"{run.name} preview"
        ndim = image.ndim
        metadata = {"cryoden_preview": True, "z": int(z), "step": int(step), "model": run.name}
        with self._guard():
            if name in self._viewer.layers and isinstance(self._viewer.layers[name], Image) \
                    and self._viewer.layers[name].ndim == ndim:
                layer = self._viewer.layers[name]
                layer.data = image
                layer.metadata.update(metadata)
            else:
                active = self._viewer.layers.selection.active
                self._viewer.add_image(
                    image, name=name, scale=tuple(source.scale)[-ndim:], translate=tuple(source.translate)[-ndim:],
                    contrast_limits=tuple(source.contrast_limits), metadata=metadata,
                )
                if active is not None and active in self._viewer.layers:
                    self._viewer.layers.selection.active = active

    def _on_note(self, message: str) -> None:
        show_warning(f"Train: {message}")

    def _on_returned(self, result: Any) -> None:
        run = self._run
        if isinstance(result, _Failed):
            self._fail(f"training failed: {result.message}")
            return
        if result is None or run is None:
            return
        self.result, self._result_run = result, run
        self._name_when_done = self.name.value
        if result.cancelled:
            best = f"; best validation loss {result.best_val:.4g}" if result.best_val is not None else ""
            self.status.value = f"cancelled at step {result.steps_done}{best}; press Save model to keep it"
            self.save_button.enabled = True
            show_info(f"Train: cancelled at step {result.steps_done}; the best checkpoint is kept, "
                      "press Save model to save it")
        else:
            self.save()

    def _on_errored(self, exc: BaseException) -> None:
        # The job turns exceptions into _Failed; anything else napari reports itself.
        self.status.value = f"failed: {type(exc).__name__}"

    def _on_finished(self) -> None:
        self.worker, self._run, self._job = None, None, None
        self._activity = close_activity(self._activity)
        self.train_button.enabled = True
        self.cancel_button.enabled = False

    # ------------------------------------------------------------------ save
    def save(self, _value=None):
        """Save the last run's best checkpoint under the chosen name (the Save model button): the
        name set when the training started, or one typed after the run ended.

        Returns the weights path, or None when nothing was saved (an error notification says
        why; the checkpoint stays available for another try with another name).
        """
        result, run = self.result, self._result_run
        if result is None or run is None:
            self._fail("nothing to save yet; train first")
            return None
        # The name set when the training started, unless it was changed after the run ended
        # (a second try after a refused name).
        typed = self.name.value
        wanted = run.name if typed == self._name_when_done else typed
        try:
            name = check_save_name(wanted, available_models())
            path = save_finetuned(result, name, card_extra=run.extra)
        except (ValueError, OSError) as exc:
            self._fail(f"could not save the model: {_one_line(exc)}")
            self.save_button.enabled = True
            return None
        self.saved_path = path
        self.result, self._result_run = None, None
        self.save_button.enabled = False
        _refresh_denoise_widgets()
        self.refresh_models()
        self.name.value = suggest_name(name, available_models())
        what = "cancelled run's best checkpoint" if result.cancelled else "model"
        self.status.value = f"saved {name!r} ({result.steps_done} steps)"
        show_info(f"Train: saved the {what} as {name!r} ({path}); choose it in the Denoise widget")
        return path
