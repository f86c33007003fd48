"""Helpers shared by the dock widgets (Denoise, Train, Metrics).

The layer lists and their refresh on layer events, the array behind an image layer, the
one-line failure a worker job returns, napari progress bookkeeping, the watcher of the viewer's
window (to stop a job when it closes) and the disconnection of worker signals.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import napari.viewer
from napari.layers import Image
from napari.utils import progress
from magicgui.widgets import Label
from qtpy.QtWidgets import QSizePolicy, QWidget


@dataclasses.dataclass(frozen=True)
class Failed:
    """Returned by a worker job instead of its result when it failed: the message to show."""

    message: str


def status_label() -> Label:
    """A status line that wraps long text instead of widening the dock (whose width the user set)."""
    label = Label(value="")
    label.native.setWordWrap(True)
    policy = label.native.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    label.native.setSizePolicy(policy)
    return label


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line (white space folded); its type name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def layer_array(layer: Image, needs: str) -> Any:
    """The array behind an image layer (level 0 of a multiscale one), without copying it.

    Raises
    ------
    ValueError
        If the layer is an RGB(A) image: ``"layer 'name' is an RGB(A) image; <needs>"``.
    """
    if layer.rgb:
        raise ValueError(f"layer {layer.name!r} is an RGB(A) image; {needs}")
    return layer.data[0] if layer.multiscale else layer.data


def image_choices(viewer: napari.viewer.Viewer) -> list[tuple[str, Image]]:
    """``(name, layer)`` of every image layer of the viewer, in layer order."""
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def watch_layers(viewer: napari.viewer.Viewer, callback: Callable[..., Any]) -> None:
    """Call `callback` when a layer is inserted, removed, moved or renamed.

    Renames of layers inserted later are followed by :func:`follow_renames`, which `callback`
    calls with the event it receives.
    """
    for emitter in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
        emitter.connect(callback)
    for layer in viewer.layers:
        layer.events.name.connect(callback)


def follow_renames(event: Any, callback: Callable[..., Any]) -> None:
    """On an ``inserted`` layer event, call `callback` when the new layer is renamed too."""
    if event is not None and getattr(event, "type", None) == "inserted":
        event.value.events.name.connect(callback)


def watch_window(widget: QWidget, watched: QWidget | None) -> QWidget | None:
    """Install `widget` as event filter of its top-level window, unless `watched` is that window.

    Returns the window watched from now on (`watched` when nothing changed, or while the widget
    is its own top level, i.e. not docked yet).
    """
    top = widget
    while top.parentWidget() is not None:
        top = top.parentWidget()
    if top is not widget and top is not watched:
        top.installEventFilter(widget)
        return top
    return watched


def disconnect(source: Any, slots: Mapping[str, Callable[..., Any]]) -> None:
    """Disconnect ``slots[name]`` from the signal ``source.<name>`` for each name; quiet if not connected."""
    for name, slot in slots.items():
        try:
            getattr(source, name).disconnect(slot)
        except (RuntimeError, TypeError):  # already disconnected
            pass


def advance(activity: progress | None, done: int, total: int) -> None:
    """Bring a napari activity (progress) to `done` out of `total`; nothing when it is None."""
    if activity is not None:
        if activity.total != total:
            activity.total = total
        if done > activity.n:
            activity.update(done - activity.n)


def close_activity(activity: progress | None) -> None:
    """Close a napari activity (progress) if there is one; returns None, for ``x = close_activity(x)``."""
    if activity is not None:
        activity.close()
    return None
