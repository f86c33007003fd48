"""``cryoden metrics``: score an image against a reference.

Imports only the standard library at import time (it is imported by :mod:`.main`); numpy and
the metrics are imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import EXIT_OK, CliError, format_voxel_size
from ._common import note as _note

HELP = "score an image against a reference: SSIM, PSNR, MSE, NRMSE and FSC resolution"

DESCRIPTION = """\
Compare IMAGE (e.g. a denoised tomogram) with REFERENCE (e.g. its clean
version), voxel by voxel: SSIM, PSNR, MSE and NRMSE (data range from the
reference), and the Fourier shell correlation (FSC; FRC for 2D images, the
median of the per-image FRCs for .mrcs stacks) with the resolutions in Å
where it falls below 0.5 and 0.143. The resolution axis
uses the reference's voxel size. Both files must have the same shape.

With --json one JSON object is printed with the keys ssim, psnr, mse, nrmse,
fsc (a list of [resolution_A, value] pairs, shell 0 left out),
res_fsc_0.5_A and res_fsc_0.143_A. JSON has no infinity: an infinite PSNR
(identical data) and a threshold the FSC never falls below are null, and a
note on stderr says why.
"""

EPILOG = """\
examples:
  cryoden metrics denoised.mrc clean.mrc
  cryoden metrics denoised.mrc clean.mrc --json --roi 0:48,100:300,100:300
  cryoden metrics even.mrc odd.mrc --half-maps

exit status: 0 success, 1 run failed, 2 bad input or option (e.g. shapes differ).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="volume or image to score (MRC)")
    p.add_argument("reference", metavar="REFERENCE", help="reference of the same shape (MRC)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--roi", metavar="Z0:Z1,Y0:Y1,X0:X1", default=None,
                   help="compare only this box, one start:stop per axis, NumPy style "
                        "(empty bounds mean the whole axis)")
    p.add_argument("--half-maps", action="store_true",
                   help="IMAGE and REFERENCE are independent half maps (even/odd): only the FSC is "
                        "computed; the image scores are null")


def _format_resolution(value: float | None, threshold: float, nyquist: float) -> str:
    if value is None:
        return f"not reached (stays above {threshold:g} up to {nyquist:.3g} Å)"
    return f"{value:.3g} Å"


def run(args: argparse.Namespace) -> int:
    import json

    from ..io import read_mrc
    from ..metrics import compare, describe_roi, parse_roi

    image, reference = read_mrc(Path(args.image)), read_mrc(Path(args.reference))
    if image.data.shape != reference.data.shape:
        raise CliError(f"IMAGE shape {tuple(image.data.shape)} differs from REFERENCE shape "
                       f"{tuple(reference.data.shape)}; both must have the same shape")
    roi = parse_roi(args.roi, reference.data.shape) if args.roi else None
    voxel_size = tuple(reference.voxel_size)
    notes = []
    if not reference.metadata.get("voxel_size_known", True):
        notes.append("REFERENCE has no voxel size in its header; resolutions assume 1 Å/voxel")
    elif (image.metadata.get("voxel_size_known", True)
          and any(abs(a - b) > 1e-3 * b for a, b in zip(image.voxel_size, voxel_size))):
        notes.append(f"voxel sizes differ (IMAGE {format_voxel_size(image.voxel_size)}, REFERENCE "
                     f"{format_voxel_size(voxel_size)}); resolutions use the reference's")

    from ..inference.stream import is_image_stack_path

    stack = reference.data.ndim == 3 and (is_image_stack_path(args.reference) or is_image_stack_path(args.image))
    report = compare(image.data, reference.data, voxel_size=voxel_size, roi=roi, half_maps=args.half_maps,
                     image_stack=stack)
    data = report.to_json()
    nyquist = report.curve.nyquist
    if report.scores is not None and report.scores["psnr"] == float("inf"):
        notes.append("psnr is null: the data are identical (infinite PSNR)")
    for key, threshold in (("res_fsc_0.5_A", 0.5), ("res_fsc_0.143_A", 0.143)):
        if data[key] is None:
            notes.append(f"{key} is null: the FSC stays above {threshold:g} up to the last shell "
                         f"({nyquist:.3g} Å)")
    for note in notes:
        _note(note)

    if args.json:
        print(json.dumps(data, allow_nan=False), flush=True)
        return EXIT_OK
    scores = report.scores or {}
    lines = [
        ("image", str(args.image)),
        ("reference", f"{args.reference}: {tuple(reference.data.shape)} voxels, "
                      f"{format_voxel_size(voxel_size)}"),
        ("region", describe_roi(roi, "ZYX")),
    ]
    if report.scores is not None:
        psnr = scores["psnr"]
        lines += [
            ("SSIM", f"{scores['ssim']:.4f}"),
            ("PSNR", "inf (identical)" if psnr == float("inf") else f"{psnr:.2f} dB"),
            ("MSE", f"{scores['mse']:.4g}"),
            ("NRMSE", f"{scores['nrmse']:.4f}"),
        ]
    kind = "FRC" if reference.data.ndim == 2 else ("median FRC" if stack else "FSC")
    lines += [
        (f"{kind} 0.5", _format_resolution(report.res_fsc_05, 0.5, nyquist)),
        (f"{kind} 0.143", _format_resolution(report.res_fsc_0143, 0.143, nyquist)),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return EXIT_OK
