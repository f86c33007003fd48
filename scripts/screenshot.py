"""Make the README screenshot: a real tomogram and its denoised copy side by side in napari.

The tomogram is opened through the plugin's reader and denoised through the Denoise dock widget
(the same handler the button calls), then the whole window is captured. It needs a display; on a
headless machine run it under a virtual X server::

    xvfb-run -a python scripts/screenshot.py                      # -> docs/screenshot.png
    xvfb-run -a python scripts/screenshot.py OUT.png --model tiny-test --tile 32

Exit status: 0 on success, 1 if denoising failed, 2 for a bad argument (missing input, unknown
model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "real" / "microtubule_tomogram_crop_13pf.mrc"
DEFAULT_OUTPUT = REPO / "docs" / "screenshot.png"
PLUGIN = "napari-cryoden"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT, help="PNG to write (default: %(default)s)")
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="MRC tomogram to show (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name (default: the default model)")
    parser.add_argument("--tile", type=int, default=0, help="tile edge in voxels, 0 = automatic")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--size", default="1400x860", help="window size WIDTHxHEIGHT (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for denoising")
    return parser.parse_args(argv)


def _wait(app, condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        app.processEvents()
        time.sleep(0.02)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from napari_cryoden.models import DEFAULT_MODEL, available_models

    model = args.model or DEFAULT_MODEL
    if not args.input.is_file():
        print(f"screenshot: input {args.input} not found", file=sys.stderr)
        return 2
    if model not in available_models():
        known = ", ".join(available_models()) or "none"
        print(f"screenshot: no model named {model!r} (available: {known})", file=sys.stderr)
        return 2
    width, height = (int(v) for v in args.size.lower().split("x"))

    import napari
    from napari.qt import get_qapp

    app = get_qapp()
    viewer = napari.Viewer(title="napari-cryoden", show=True)
    try:
        viewer.window.resize(width, height)
        [layer] = viewer.open(str(args.input), plugin=PLUGIN)
        _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
        widget.image.value = layer
        widget.model.value = model
        widget.tile.value = args.tile
        widget.device.value = args.device
        widget.side_by_side.value = True
        widget.run()
        if not _wait(app, lambda: not widget.is_running, args.timeout):
            widget.cancel()
            _wait(app, lambda: not widget.is_running, 60)
            print(f"screenshot: denoising took longer than {args.timeout:.0f} s", file=sys.stderr)
            return 1
        name = f"{layer.name} denoised"
        if name not in viewer.layers:
            print(f"screenshot: denoising failed ({widget.status.value})", file=sys.stderr)
            return 1
        viewer.layers.selection.active = viewer.layers[name]
        viewer.reset_view()
        _wait(app, lambda: False, 0.5)  # let the canvas draw
        args.output.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.output), canvas_only=False, flash=False)
        print(f"screenshot: wrote {args.output} ({layer.name}, model {model})")
        return 0
    finally:
        viewer.close()


if __name__ == "__main__":
    sys.exit(main())
