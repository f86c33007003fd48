"""Score shipped 3D models and an oracle Gaussian on the realistic held-out set.

The set is :func:`napari_cryoden.training.recipes.realistic_held_out_set`: 4 crowded simulated
tomograms made only from the held-out proteins (1u6g, 3h84). Prints the median PSNR/SSIM of the
best-σ Gaussian filter (σ chosen per volume against the clean target, an oracle) and of each
model, with the time each model takes for the 4 volumes. Run from the repository root::

    python benchmarks/heldout.py [MODEL ...]
"""

import sys
import time

import numpy as np
from scipy.ndimage import gaussian_filter

from napari_cryoden.metrics import image_metrics
from napari_cryoden.models import available_models, load_model
from napari_cryoden.simulate import load_particle_maps
from napari_cryoden.training.recipes import evaluate_held_out, realistic_held_out_set


def main(names) -> int:
    maps = load_particle_maps("../shared/data/maps_10A")
    pairs = realistic_held_out_set(maps)
    rows = [max((image_metrics(gaussian_filter(n, s), c) for s in (0.5, 1, 1.5, 2, 3)), key=lambda m: m["psnr"])
            for n, c in pairs]
    print("best-sigma gaussian median PSNR %.2f SSIM %.3f" % (np.median([r["psnr"] for r in rows]),
                                                             np.median([r["ssim"] for r in rows])))
    for name in names or [n for n, c in available_models().items() if c.get("ndim", 3) == 3]:
        t = time.perf_counter()
        s = evaluate_held_out(load_model(name), pairs, precision="auto")
        print(f"{name}: input {s['input']['psnr'][50]:.2f} -> {s['denoised']['psnr'][50]:.2f} dB, "
              f"SSIM {s['input']['ssim'][50]:.3f} -> {s['denoised']['ssim'][50]:.3f}, {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
