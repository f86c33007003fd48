"""Denoise a real micrograph with a 2D model and save a crop of it before and after, side by side.

The micrograph is binned (block mean) to about the pixel size the model was trained at, denoised
whole with :func:`napari_cryoden.inference.denoise`, and a square crop of the binned input and of
the output is drawn in grey with contrast from the 1st-99th percentiles of each panel, a scale
bar and the pixel size in the title. Run from the repository root::

    python scripts/micrograph_crop.py docs/micrograph_crop.png                 # n2n-unet-2d, EPU example
    python scripts/micrograph_crop.py OUT.png --model tiny-2d --bin 2 --crop 128 --center 300 400

The default input is ``../shared/data/real/epu2.9_example.mrc`` (4096 x 4096 pixels at 0.667 Å,
written by EPU 2.9), which the default ``--bin auto`` brings to 8 x 0.667 = 5.33 Å/pixel for a
model trained at 5 Å/pixel.

Exit status: 0 on success, 2 for a bad argument (missing or unreadable input, unknown model, a
3D input, an output that is the input or not a .png).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "real" / "epu2.9_example.mrc"
DEFAULT_MODEL = "n2n-unet-2d"
#: Candidate scale-bar lengths, Å.
_BAR_LENGTHS_A = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of `factor` x `factor` pixels, as float32; edge rows/columns that do not fill a block are dropped.

    Raises
    ------
    ValueError
        If `factor` is not a positive integer or larger than the image.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"the binning factor must be a positive integer, got {factor!r}")
    ny, nx = (n // factor for n in image.shape)
    if ny < 1 or nx < 1:
        raise ValueError(f"binning {factor}x does not fit an image of {image.shape[0]} x {image.shape[1]} pixels")
    out = np.empty((ny, nx), dtype=np.float32)
    for y in range(0, ny, 64):  # a few rows of blocks at a time: never a float64 copy of a 4k image
        rows = np.asarray(image[y * factor:min(ny, y + 64) * factor, :nx * factor], dtype=np.float64)
        out[y:y + rows.shape[0] // factor] = rows.reshape(-1, factor, nx, factor).mean(axis=(1, 3))
    return out


def auto_bin(pixel_size: float, model_pixel_size: float | None) -> int:
    """The integer binning that brings `pixel_size` (Å) closest to `model_pixel_size` (1 if unknown)."""
    if not model_pixel_size or not pixel_size or pixel_size <= 0:
        return 1
    return max(1, int(round(model_pixel_size / pixel_size)))


def prepare(path: str | Path, model: str, *, factor: int | None = None, crop: int = 256,
            center: tuple[int, int] | None = None, device: str = "auto", precision: str = "auto") -> dict:
    """Read, bin and denoise a micrograph; return the two crops and what is needed to draw them.

    `factor` is the integer binning (default: :func:`auto_bin` to the model card's
    ``voxel_size_A``); `center` is (y, x) in unbinned pixels (default: the middle).

    Returns
    -------
    dict
        ``raw`` and ``denoised`` (crop, crop) float32 crops of the binned input and of its
        denoised copy, ``pixel_size`` (Å after binning, None if the header has none), ``factor``,
        ``box`` (y0, x0 of the crop in the binned image), ``binned_shape``, ``model``.

    Raises
    ------
    ValueError
        For a 3D input, a bad crop or centre, or an unknown model (ModelError).
    """
    from napari_cryoden.inference import denoise
    from napari_cryoden.io import read_mrc
    from napari_cryoden.models import load_model

    mrc = read_mrc(path)
    data = mrc.data
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise ValueError(f"{path} holds {data.shape[0]} images of shape {data.shape[1:]}; give one micrograph")
    known = bool(mrc.metadata.get("voxel_size_known"))
    px = float(mrc.voxel_size[-1]) if known else None
    lm = load_model(model)
    if lm.ndim != 2:
        raise ValueError(f"model {model!r} is a 3D tomogram model; give a 2D micrograph model")
    if factor is None:
        factor = auto_bin(px or 0.0, lm.card.get("voxel_size_A"))
    binned = bin_image(data, factor)
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 8:
        raise ValueError(f"crop must be an integer of at least 8 pixels, got {crop!r}")
    size = min(crop, *binned.shape)
    cy, cx = (n // 2 for n in binned.shape) if center is None else (int(c) // factor for c in center)
    if not (0 <= cy < binned.shape[0] and 0 <= cx < binned.shape[1]):
        raise ValueError(f"centre {center} is outside the micrograph ({data.shape[0]} x {data.shape[1]} pixels)")
    y0 = int(np.clip(cy - size // 2, 0, binned.shape[0] - size))
    x0 = int(np.clip(cx - size // 2, 0, binned.shape[1] - size))
    den = denoise(binned, lm, device=device, precision=precision)
    box = (slice(y0, y0 + size), slice(x0, x0 + size))
    return {"raw": binned[box], "denoised": den[box], "pixel_size": px * factor if px else None, "factor": factor,
            "box": (y0, x0), "binned_shape": binned.shape, "model": lm.name}


def _scale_bar(ax, size_px: int, pixel_size: float) -> None:
    from matplotlib.patches import Rectangle

    width_a = size_px * pixel_size
    length = max([b for b in _BAR_LENGTHS_A if b <= width_a / 4] or [_BAR_LENGTHS_A[0]])
    bar_px = length / pixel_size
    x0, y0, h = 0.05 * size_px, 0.93 * size_px, max(1.0, 0.012 * size_px)
    ax.add_patch(Rectangle((x0, y0), bar_px, h, color="white"))
    label = f"{length / 10:g} nm" if length >= 10 else f"{length:g} Å"
    ax.text(x0 + bar_px / 2, y0 - 0.015 * size_px, label, color="white", ha="center", va="bottom", fontsize=9)


def render(parts: dict, output: str | Path, *, title: str = "") -> Path:
    """Draw the raw and denoised crops side by side and write them to `output` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from napari_cryoden.io.atomic import atomic_path

    px = parts["pixel_size"]
    scale = f"{px:.2f} Å/pixel" if px else "pixel size unknown"
    binning = f"binned {parts['factor']}x, " if parts["factor"] > 1 else ""
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4), constrained_layout=True)
    try:
        for ax, key, name in zip(axes, ("raw", "denoised"), (f"raw ({binning}{scale})", f"denoised: {parts['model']}")):
            img = parts[key]
            lo, hi = np.percentile(img, [1, 99])
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            ax.set_title(name, fontsize=11)
            ax.set_axis_off()
            if px:
                _scale_bar(ax, img.shape[1], px)
        if title:
            fig.suptitle(title, fontsize=10)
        output = Path(output)
        with atomic_path(output) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="PNG to write")
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="2D MRC micrograph (default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="2D model name or card path (default: %(default)s)")
    parser.add_argument("--bin", default="auto",
                        help="integer binning before denoising, or 'auto': closest to the model's pixel size")
    parser.add_argument("--crop", type=int, default=256, help="edge of the crop in binned pixels (default: 256)")
    parser.add_argument("--center", type=int, nargs=2, metavar=("Y", "X"), default=None,
                        help="centre of the crop in unbinned pixels (default: the middle)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        if a.output.suffix.lower() != ".png":
            raise ValueError(f"output {a.output} must be a .png file")
        if a.output.exists() and a.input.exists() and a.output.resolve() == a.input.resolve():
            raise ValueError(f"output {a.output} is the input file")
        if not a.output.parent.is_dir():
            raise ValueError(f"output folder {a.output.parent} does not exist")
        if a.bin == "auto":
            factor = None
        else:
            try:
                factor = int(a.bin)
            except ValueError:
                raise ValueError(f"--bin must be 'auto' or a positive integer, got {a.bin!r}") from None
        parts = prepare(a.input, a.model, factor=factor, crop=a.crop, center=a.center, device=a.device,
                        precision=a.precision)
        y0, x0 = parts["box"]
        n = parts["raw"].shape[0]
        title = (f"{a.input.name}: {n} x {n} binned pixels at ({y0}, {x0}) of "
                 f"{parts['binned_shape'][0]} x {parts['binned_shape'][1]}")
        out = render(parts, a.output, title=title)
    except (ValueError, OSError) as exc:  # MrcError and ModelError are ValueErrors
        print(f"micrograph_crop: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
