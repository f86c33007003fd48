"""``cryoden benchmark``: every shipped model against classical baselines, in the layout of the
thesis tables.

For each experiment of :data:`~napari_cryoden.evaluation.experiments.EXPERIMENTS`, every test
item is scored against its clean target with :func:`~napari_cryoden.metrics.image_metrics`
(SSIM, PSNR, MSE and NRMSE as in van Gijn 2019, section 4.1, with the data range of the clean
volume). The rows are:

- the noisy input;
- a Gaussian filter with the best σ per item (:func:`~.baselines.best_gaussian`, an oracle);
- BM4D for tomograms on the first `bm_n` items only (in an experiment with dose bands, the
  realistic one, the first `bm_n` of each band), because it is slow (about 30 s per 64^3
  volume), and BM3D for micrographs on the first `bm_n_2d` (default: all; about 8 s per
  512 x 512 image) (:func:`~.baselines.block_matching`);
- every model whose dimensionality matches the experiment.

:func:`run_benchmark` returns plain data (JSON-safe); :func:`report_markdown` turns it into the
tables of the thesis (5th, 50th and 95th percentiles per metric) with a summary, the medians
per dose band of the realistic experiment (:func:`band_medians`), the targets of the project and,
when given, PNG panels of one example slice per experiment
(:func:`write_panels`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..metrics import image_metrics, summarize
from .baselines import best_gaussian, block_matching
from .experiments import EXPERIMENTS, HELD_OUT

__all__ = [
    "BAND_BEST_GAIN_DB", "BAND_GAIN_DB", "DEFAULT_2D_MODEL", "THESIS_BEST", "band_medians", "report_markdown",
    "run_benchmark", "targets", "write_panels",
]

#: The 2D default model (issue targets refer to it).
DEFAULT_2D_MODEL = "n2n-unet-2d"

#: Best median SSIM and PSNR of any network in the thesis tables (van Gijn 2019, tables 2-5),
#: with the row that reached it; published figures, for comparison only.
THESIS_BEST = {
    "control": {"ssim": (0.9934, "UpsampleUnet48 GAN"), "psnr": (35.72, "Unet48 AE")},
    "saltpepper": {"ssim": (0.9484, "UpsampleUnet48 WGAN-GP"), "psnr": (24.09, "UpsampleUnet48 AE")},
    "unseen": {"ssim": (0.9959, "UpsampleUnet48 GAN"), "psnr": (37.56, "UpsampleUnet48 GAN")},
    "multiple": {"ssim": (0.5569, "UpsampleUnet48 GAN"), "psnr": (22.42, "UpsampleUnet48 GAN")},
}

#: Realistic experiment, every dose band: the default 3D model's least median-PSNR gain over the
#: best-σ Gaussian, dB.
BAND_GAIN_DB = 2.5

#: Realistic experiment: the best 3D model's least gain over the best-σ Gaussian, dB, as the mean
#: over the dose bands of the per-band median-PSNR gains.
BAND_BEST_GAIN_DB = 3.5

INPUT, GAUSSIAN = "noisy input", "Gaussian, best σ (oracle)"


def _slice(a: np.ndarray) -> np.ndarray:
    """The central Z slice of a volume, or the image itself."""
    return np.asarray(a[a.shape[0] // 2] if a.ndim == 3 else a, np.float32)


def run_benchmark(
    experiments: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    *,
    maps: dict[float, str | Path],
    n: int | None = None,
    bm_n: int = 2,
    bm_n_2d: int | None = None,
    seed: int = 0,
    precision: str = "auto",
    log: Callable[[str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict:
    """Run the benchmark.

    Parameters
    ----------
    experiments : sequence of str, optional
        Keys of :data:`~napari_cryoden.evaluation.experiments.EXPERIMENTS` (default: all).
    models : sequence of str, optional
        Registry names or card paths (default: every available model). Each runs on the
        experiments of its dimensionality.
    maps : dict
        Voxel size in Å -> folder of particle maps at that size (10 Å for tomograms, 5 Å for
        micrographs); experiments whose voxel size has no folder raise.
    n : int, optional
        Test items per experiment (default: each experiment's ``default_n``).
    bm_n : int, default=2
        Items per tomogram experiment that BM4D denoises (the first ones; in an experiment whose
        items carry a dose band, the realistic one, the first `bm_n` of each band); 0 leaves it out.
    bm_n_2d : int, optional
        Items per micrograph experiment that BM3D denoises (the first ones; default: all);
        0 leaves it out.
    seed : int, default=0
        Offset added to every experiment's base seed (0 reproduces the published tables).
    precision : str, default="auto"
        Inference precision of the models (see :func:`napari_cryoden.denoise`).
    log : callable(str), optional
        Progress messages.
    cancel : callable() -> bool, optional
        Polled between items; True raises KeyboardInterrupt.

    Returns
    -------
    dict
        ``settings`` and, per experiment, ``methods``: per method the per-item metric rows
        (None where a method did not run), its seconds, and ``panel`` slices (central Z slice of
        the first item) under ``_panels`` (ndarrays, not JSON; :func:`write_panels` uses them).
        An experiment whose items carry a dose band (the realistic one) also has ``items`` (per
        item ``band``, ``dose`` in e-/Å² and ``defocus_um``), ``bands`` (band -> ``items``, the
        item indices, and ``dose``, the [lowest, highest] total dose in e-/Å²) and
        ``band_medians`` (:func:`band_medians`).

    Raises
    ------
    ValueError
        For an unknown experiment or model, a missing maps folder, ``n < 1``, ``bm_n < 0`` or
        ``bm_n_2d < 0``, or a missing ``bm4d``/``bm3d`` package for a non-zero count.
    """
    from ..inference import denoise
    from ..models import available_models, load_model
    from ..simulate import load_particle_maps

    log = log or (lambda msg: None)
    names = list(experiments or EXPERIMENTS)
    unknown = [e for e in names if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment {unknown[0]!r}; choose from {', '.join(EXPERIMENTS)}")
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    for label, count in (("bm_n", bm_n), ("bm_n_2d", bm_n_2d)):
        if count is not None and count < 0:
            raise ValueError(f"{label} must be at least 0, got {count}")
    loaded = {m: load_model(m) for m in (models if models is not None else available_models())}

    def bm_count(ndim: int, n_items: int) -> int:
        return bm_n if ndim == 3 else (n_items if bm_n_2d is None else bm_n_2d)

    bm = {d: block_matching(d) for d in {EXPERIMENTS[e].ndim for e in names} if bm_count(d, 1)}
    map_cache: dict[float, dict] = {}

    def check_cancel():
        if cancel is not None and cancel():
            raise KeyboardInterrupt

    out = {
        "settings": {
            "experiments": names, "models": list(loaded), "n": n, "bm_n": bm_n, "bm_n_2d": bm_n_2d, "seed": seed,
            "precision": precision,
            "held_out_particles": list(HELD_OUT), "maps": {str(k): str(v) for k, v in maps.items()},
            "hardware": _hardware(), "torch_threads": _threads(),
        },
        "experiments": {},
    }
    for name in names:
        exp = EXPERIMENTS[name]
        if exp.voxel_size not in maps:
            raise ValueError(f"experiment {name!r} needs particle maps at {exp.voxel_size:g} Å/voxel")
        if exp.voxel_size not in map_cache:
            map_cache[exp.voxel_size] = load_particle_maps(maps[exp.voxel_size])
        t0 = time.perf_counter()
        items = exp.make(map_cache[exp.voxel_size], n or exp.default_n, exp.seed + seed)
        log(f"{name}: {len(items)} items of shape {items[0].noisy.shape} made in {time.perf_counter() - t0:.1f} s")
        methods: dict[str, dict] = {}
        panels = {INPUT: _slice(items[0].noisy)}

        def add(method, i, metrics, seconds):
            entry = methods.setdefault(method, {"rows": [None] * len(items), "seconds": 0.0})
            entry["rows"][i] = metrics
            entry["seconds"] += seconds

        sigmas = []
        for i, it in enumerate(items):
            check_cancel()
            add(INPUT, i, image_metrics(it.noisy, it.clean), 0.0)
            t = time.perf_counter()
            filtered, sigma, m = best_gaussian(it.noisy, it.clean)
            add(GAUSSIAN, i, m, time.perf_counter() - t)
            sigmas.append(sigma)
            if i == 0:
                panels[GAUSSIAN] = _slice(filtered)
        bands = _item_bands(items)
        k_bm = bm_count(exp.ndim, len(items))
        if k_bm:
            bm_name, bm_run = bm[exp.ndim]
            # the first k of each dose band for tomograms with bands, else the first k items
            chosen = sorted(i for idx in bands.values() for i in idx[:k_bm]) if bands and exp.ndim == 3 \
                else list(range(min(k_bm, len(items))))
            for i in chosen:
                check_cancel()
                t = time.perf_counter()
                den = bm_run(items[i].noisy, items[i].noise_std)
                add(bm_name, i, image_metrics(den, items[i].clean), time.perf_counter() - t)
                if i == 0:
                    panels[bm_name] = _slice(den)
            log(f"{name}: {bm_name} on {len(chosen)} items{' (per dose band)' if bands and exp.ndim == 3 else ''} "
                f"in {methods[bm_name]['seconds']:.1f} s")
        for mname, lm in loaded.items():
            if lm.ndim != exp.ndim:
                continue
            for i, it in enumerate(items):
                check_cancel()
                t = time.perf_counter()
                den = denoise(it.noisy, lm, device="cpu", precision=precision)
                add(mname, i, image_metrics(den, it.clean), time.perf_counter() - t)
                if i == 0:
                    panels[mname] = _slice(den)
            log(f"{name}: {mname} median PSNR {_median(methods[mname]['rows'], 'psnr'):.2f} dB "
                f"in {methods[mname]['seconds']:.1f} s")
        panels["clean"] = _slice(items[0].clean)
        entry = {
            "title": exp.title, "ndim": exp.ndim, "n": len(items), "shape": list(items[0].noisy.shape),
            "seed": exp.seed + seed, "gaussian_sigma": sigmas,
            "methods": {k: {**v, "seconds": round(v["seconds"], 2)} for k, v in methods.items()},
        }
        if bands:
            entry["items"] = [{"band": it.band, "dose": it.dose, "defocus_um": it.defocus_um} for it in items]
            entry["bands"] = {b: {"items": idx, "dose": [min(items[i].dose for i in idx),
                                                         max(items[i].dose for i in idx)]}
                              for b, idx in bands.items()}
            entry["band_medians"] = band_medians(entry)
            for b, v in entry["band_medians"].get(GAUSSIAN, {}).items():
                log(f"{name}: band {b} Gaussian median PSNR {v['psnr']:.2f} dB")
        entry["_panels"] = panels
        out["experiments"][name] = entry
    return out


def _hardware() -> str:
    from ..device import hardware_name

    return hardware_name(threads=False)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _median(rows, key: str, only=None) -> float:
    vals = [r[key] for i, r in enumerate(rows) if r is not None and (only is None or i in only)]
    return float(np.median(vals)) if vals else math.nan


def _item_bands(items) -> dict[str, list[int]]:
    """Dose band -> indices of its items, bands in order of first appearance; {} without bands."""
    bands: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if getattr(it, "band", None) is not None:
            bands.setdefault(it.band, []).append(i)
    return bands


def _bands_of(e: dict) -> dict[str, list[int]]:
    """Band -> item indices of an experiment result; one band ``"all"`` when it has none."""
    if e.get("bands"):
        return {b: list(v["items"]) for b, v in e["bands"].items()}
    n = len(next(iter(e["methods"].values()))["rows"])
    return {"all": list(range(n))}


def band_medians(experiment: dict) -> dict[str, dict[str, dict]]:
    """Median PSNR and SSIM of every method in every dose band of one experiment result.

    Parameters
    ----------
    experiment : dict
        One entry of ``run_benchmark(...)["experiments"]``: ``methods`` (method -> ``rows``, one
        metric dict or None per item) and ``bands`` (band -> ``items``, the item indices). Without
        ``bands`` all items form one band, ``"all"``.

    Returns
    -------
    dict
        method -> band -> ``{"psnr": dB, "ssim": ..., "n": items scored}``, the medians over the
        band's items that the method ran on (NaN and ``n=0`` where it ran on none).
    """
    bands = _bands_of(experiment)
    out: dict[str, dict[str, dict]] = {}
    for k, v in experiment["methods"].items():
        out[k] = {}
        for b, idx in bands.items():
            only = set(idx)
            out[k][b] = {"psnr": _median(v["rows"], "psnr", only), "ssim": _median(v["rows"], "ssim", only),
                         "n": sum(v["rows"][i] is not None for i in idx)}
    return out


def _all_bands(checks: dict[str, bool | None]) -> bool | None:
    """Met in every band: False if any band misses, None if any band could not be checked."""
    if any(c is False for c in checks.values()):
        return False
    return None if any(c is None for c in checks.values()) else True


def _band_targets(e: dict, default_3d: str) -> list[dict]:
    """The realistic experiment's targets, checked in every dose band (see :func:`targets`)."""
    m = e["methods"]
    if default_3d not in m:
        return [{"target": f"realistic: {default_3d} runs", "value": "not run", "met": None}]
    bands = _bands_of(e)
    med = band_medians(e)
    model, gauss = med[default_3d], med[GAUSSIAN]

    def row(target, values, checks, unit):
        fmt = "+.2f" if unit else "+.4f"
        text = ", ".join(f"{b} " + ("not run" if math.isnan(values[b]) else format(values[b], fmt)) for b in bands)
        return {"target": target, "value": text + unit, "met": _all_bands(checks),
                "bands": {b: {"value": values[b], "met": checks[b]} for b in bands}}

    gain = {b: model[b]["psnr"] - gauss[b]["psnr"] for b in bands}
    rows = [row(f"realistic, every dose band: {default_3d} ≥ best-σ Gaussian + {BAND_GAIN_DB:g} dB (median PSNR)",
                gain, {b: bool(gain[b] >= BAND_GAIN_DB) for b in bands}, " dB")]
    if "BM4D" in m:
        bm_rows = m["BM4D"]["rows"]
        d, ok = {}, {}
        for b, idx in bands.items():
            sub = {i for i in idx if bm_rows[i] is not None}
            d[b] = _median(m[default_3d]["rows"], "psnr", sub) - _median(bm_rows, "psnr", sub) if sub else math.nan
            ok[b] = bool(d[b] > 0) if sub else None
        rows.append(row(f"realistic, every dose band: {default_3d} beats BM4D (median PSNR on the band's BM4D items)",
                        d, ok, " dB"))
    else:
        rows.append({"target": f"realistic, every dose band: {default_3d} beats BM4D", "value": "BM4D not run",
                     "met": None})
    ds = {b: model[b]["ssim"] - gauss[b]["ssim"] for b in bands}
    rows.append(row(f"realistic, every dose band: {default_3d} median SSIM > best-σ Gaussian's", ds,
                    {b: bool(ds[b] > 0) for b in bands}, ""))
    zoo = {k: float(np.mean([med[k][b]["psnr"] - gauss[b]["psnr"] for b in bands]))
           for k in m if k not in (INPUT, GAUSSIAN, "BM4D")}
    zoo = {k: v for k, v in zoo.items() if not math.isnan(v)}
    if zoo:
        best = max(zoo, key=zoo.get)
        per = ", ".join(f"{b} {med[best][b]['psnr'] - gauss[b]['psnr']:+.2f}" for b in bands)
        rows.append({"target": f"realistic: best 3D model ≥ best-σ Gaussian + {BAND_BEST_GAIN_DB:g} dB "
                               "(median PSNR gain, mean over the dose bands)",
                     "value": f"{best} {zoo[best]:+.2f} dB ({per})", "met": bool(zoo[best] >= BAND_BEST_GAIN_DB)})
    return rows


def targets(result: dict, default_3d: str | None = None, default_2d: str = DEFAULT_2D_MODEL) -> list[dict]:
    """The project's targets, checked on a :func:`run_benchmark` result.

    - multiple particles: the default 3D model beats the best-σ Gaussian by at least 2 dB median
      PSNR, and BM4D (median PSNR on the items BM4D ran on);
    - realistic tomograms, in every dose band (:func:`band_medians`): the default 3D model beats
      the best-σ Gaussian by at least :data:`BAND_GAIN_DB` (2.5 dB) median PSNR, beats BM4D
      (median PSNR on the band's items BM4D ran on) and has a higher median SSIM than the
      Gaussian; and the best 3D model's median-PSNR gain over the Gaussian, averaged over the
      bands, is at least :data:`BAND_BEST_GAIN_DB` (3.5 dB). Without dose bands in the result
      all items form one band;
    - control and unseen particle: the best model's median SSIM is within 0.01 of the thesis's
      best (:data:`THESIS_BEST`) or better;
    - micrographs: the 2D default beats the best-σ Gaussian and BM3D by at least 1.5 dB median
      PSNR (BM3D: on the items it ran on).

    Parameters
    ----------
    result : dict
        From :func:`run_benchmark` (only ``experiments`` -> ``methods`` -> ``rows`` and, for the
        realistic experiment, ``bands`` are read).
    default_3d : str, optional
        The 3D model the targets name (default: the registry's default 3D model).
    default_2d : str, default=:data:`DEFAULT_2D_MODEL`
        The 2D model of the micrograph targets.

    Returns
    -------
    list of dict
        One per check: ``target`` (text), ``value`` (text) and ``met`` (bool, or None when a
        method needed did not run); per-band checks also carry ``bands`` (band -> ``value``, the
        difference, and ``met``) and are met only when met in every band.
    """
    from ..models import DEFAULT_MODEL

    default_3d = default_3d or DEFAULT_MODEL
    exps = result["experiments"]
    rows = []
    for name in ("multiple",):
        e = exps.get(name)
        if e is None:
            continue
        m = e["methods"]
        model = m.get(default_3d)
        if model is None:
            rows.append({"target": f"{name}: {default_3d} runs", "value": "not run", "met": None})
            continue
        gain = _median(model["rows"], "psnr") - _median(m[GAUSSIAN]["rows"], "psnr")
        rows.append({"target": f"{name}: {default_3d} ≥ best-σ Gaussian + 2 dB (median PSNR)",
                     "value": f"{gain:+.2f} dB", "met": bool(gain >= 2.0)})
        if "BM4D" in m:
            sub = {i for i, r in enumerate(m["BM4D"]["rows"]) if r is not None}
            d = _median(model["rows"], "psnr", sub) - _median(m["BM4D"]["rows"], "psnr")
            rows.append({"target": f"{name}: {default_3d} beats BM4D (median PSNR on the {len(sub)} BM4D items)",
                         "value": f"{d:+.2f} dB", "met": bool(d > 0)})
    if "realistic" in exps:
        rows += _band_targets(exps["realistic"], default_3d)
    for name in ("control", "unseen"):
        e = exps.get(name)
        if e is None:
            continue
        best_ssim, best_row = THESIS_BEST[name]["ssim"]
        ours = {k: _median(v["rows"], "ssim") for k, v in e["methods"].items() if k not in (INPUT, GAUSSIAN, "BM4D")}
        if not ours:
            continue
        k = max(ours, key=ours.get)
        rows.append({"target": f"{name}: best model's median SSIM ≥ thesis best {best_ssim:.4f} ({best_row}) - 0.01",
                     "value": f"{k} {ours[k]:.4f} ({ours[k] - best_ssim:+.4f})", "met": bool(ours[k] >= best_ssim - 0.01)})
    e = exps.get("micrographs")
    if e is not None and default_2d in e["methods"]:
        m = e["methods"]
        model = m[default_2d]
        for base in (GAUSSIAN, "BM3D"):
            if base not in m:
                continue
            sub = {i for i, r in enumerate(m[base]["rows"]) if r is not None}
            d = _median(model["rows"], "psnr", sub) - _median(m[base]["rows"], "psnr")
            rows.append({"target": f"micrographs: {default_2d} ≥ {base.split(',')[0]} + 1.5 dB (median PSNR"
                                   + (f" on the {len(sub)} BM3D items)" if base == "BM3D" else ")"),
                         "value": f"{d:+.2f} dB", "met": bool(d >= 1.5)})
    return rows


def _fmt_table(methods: dict) -> list[str]:
    lines = ["| Method | P % | SSIM | PSNR dB | MSE ×1000 | NRMSE | n | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    meds = {k: {key: _median(v["rows"], key) for key in ("ssim", "psnr", "mse", "nrmse")}
            for k, v in methods.items() if k != INPUT}
    best = {}
    for key, better in (("ssim", max), ("psnr", max), ("mse", min), ("nrmse", min)):
        vals = {k: v[key] for k, v in meds.items() if not math.isnan(v[key])}
        best[key] = better(vals, key=vals.get) if vals else None
    for k, v in methods.items():
        done = [r for r in v["rows"] if r is not None]
        s = summarize(done)
        for p in (5, 50, 95):
            def cell(key, fmt, scale=1.0):
                text = format(s[key][p] * scale, fmt)
                return f"**{text}**" if p == 50 and best.get(key) == k else text
            lines.append(
                f"| {k if p == 5 else ''} | {p} | {cell('ssim', '.4f')} | {cell('psnr', '.2f')} | "
                f"{cell('mse', '.3f', 1000)} | {cell('nrmse', '.4f')} | {len(done) if p == 5 else ''} | "
                f"{format(v['seconds'], '.1f') if p == 5 and k != INPUT else ''} |"
            )
    return lines


def report_markdown(result: dict, *, command: str, panels: dict[str, str] | None = None,
                    seconds: float | None = None) -> str:
    """The benchmark report: settings, summary, targets, then one thesis-layout table per experiment.

    Parameters
    ----------
    result : dict
        From :func:`run_benchmark`.
    command : str
        The command line that produced it (printed in the report).
    panels : dict, optional
        Experiment -> relative path of its PNG panel (:func:`write_panels`).
    seconds : float, optional
        Wall time of the whole run.
    """
    st = result["settings"]
    exps = result["experiments"]
    banded = [k for k, e in exps.items() if e.get("bands")]
    lines = [
        "# Benchmarks",
        "",
        "Made by `cryoden benchmark`; rerun it to reproduce every number here:",
        "",
        f"```bash\n{command}\n```",
        "",
        f"Hardware: {st['hardware']}, {st['torch_threads']} torch threads, precision {st['precision']}"
        + (f"; the whole run took {seconds / 60:.1f} min." if seconds is not None else "."),
        f"Test sets: made only from the held-out proteins {', '.join(st['held_out_particles'])}, which no shipped "
        "model was trained on (see `napari_cryoden.evaluation.experiments`). Scores: `skimage.metrics` against the "
        "clean target with the data range of the clean volume (van Gijn 2019, section 4.1); NRMSE is "
        "‖x − ref‖ / ‖ref‖. The Gaussian row picks, per item, the σ with the best PSNR against the clean target "
        f"(an oracle). BM4D (tomograms) runs on the first {st['bm_n']} items of each experiment"
        + (f" ({' and '.join(banded)}: of each dose band, so {_and(banded, lambda k: _bm_count(exps[k]))} items)"
           if banded and st["bm_n"] else "")
        + f" and BM3D (micrographs) on {_bm3d_items(st)}, with `sigma_psd` the noise standard deviation "
        "(thesis sets: std of noisy − clean, an oracle; simulated tomograms and micrographs: from the even/odd "
        "halves). Seconds are the total for the items each method ran on.",
        "",
        "## Summary: median PSNR (dB) / SSIM",
        "",
    ]
    methods = []
    for e in exps.values():
        for k in e["methods"]:
            if k not in methods:
                methods.append(k)
    lines.append("| Method | " + " | ".join(exps) + " |")
    lines.append("|---|" + "---|" * len(exps))
    for k in methods:
        cells = []
        for e in exps.values():
            v = e["methods"].get(k)
            if v is None:
                cells.append("")
                continue
            n_done = sum(r is not None for r in v["rows"])
            tag = f" (n={n_done})" if n_done != e["n"] else ""
            cells.append(f"{_median(v['rows'], 'psnr'):.2f} / {_median(v['rows'], 'ssim'):.3f}{tag}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    for name in banded:
        lines += ["", f"## Summary per dose band ({name}): median PSNR (dB) / SSIM", ""] + _band_table(exps[name])
    tg = targets(result)
    if tg:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in tg:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {t['value']} | {met} |")
    for name, e in exps.items():
        lines += ["", f"## {e['title']}", "",
                  f"{e['n']} items of {' × '.join(map(str, e['shape']))}, seed {e['seed']}; Gaussian σ chosen: "
                  f"median {np.median(e['gaussian_sigma']):g}."]
        if e.get("bands"):
            lines.append(_band_text(e))
        if name in THESIS_BEST:
            tb = THESIS_BEST[name]
            lines.append(f"Thesis best medians (different data, 6 Å/voxel, trained and tested on the same proteins): "
                         f"SSIM {tb['ssim'][0]:.4f} ({tb['ssim'][1]}), PSNR {tb['psnr'][0]:.2f} dB ({tb['psnr'][1]}).")
        bm_name = next((k for k in ("BM4D", "BM3D") if k in e["methods"]), None)
        if bm_name:
            sub = {i for i, r in enumerate(e["methods"][bm_name]["rows"]) if r is not None}
            paired = ", ".join(f"{k} {_median(v['rows'], 'psnr', sub):.2f}" for k, v in e["methods"].items())
            lines.append(f"Median PSNR (dB) on the {len(sub)} items {bm_name} ran on: {paired}.")
        lines += [""] + _fmt_table(e["methods"])
        if panels and name in panels:
            order = [k for k in e["_panels"]]
            first = e["items"][0] if e.get("items") else None
            item0 = f"item 0 ({first['band']} band, {first['dose']:g} e⁻/Å², defocus {first['defocus_um']:g} µm)" \
                if first else "item 0"
            lines += ["", f"![{name}]({panels[name]})", "",
                      f"Central Z slice of {item0}, left to right: {', '.join(order)}; one grey scale for all "
                      "(minimum to maximum of the clean slice)." if e["ndim"] == 3 else
                      f"Item 0, left to right: {', '.join(order)}; one grey scale for all (minimum to maximum "
                      "of the clean image)."]
    return "\n".join(lines) + "\n"


def _and(keys, count) -> str:
    return " and ".join(str(count(k)) for k in keys)


def _bm_count(e: dict) -> int:
    return sum(r is not None for r in e["methods"].get("BM4D", {"rows": []})["rows"])


def _band_table(e: dict) -> list[str]:
    """Markdown table: method x dose band, median PSNR / SSIM (with n where a method skipped items)."""
    med = band_medians(e)
    bands = e["bands"]
    head = [f"{b}: {v['dose'][0]:g}{'' if v['dose'][1] == v['dose'][0] else '–' + format(v['dose'][1], 'g')} e⁻/Å² "
            f"(n={len(v['items'])})" for b, v in bands.items()]
    lines = ["| Method | " + " | ".join(head) + " |", "|---|" + "---|" * len(bands)]
    for k, per in med.items():
        cells = []
        for b, v in bands.items():
            c = per[b]
            if c["n"] == 0:
                cells.append("")
                continue
            tag = f" (n={c['n']})" if c["n"] != len(v["items"]) else ""
            cells.append(f"{c['psnr']:.2f} / {c['ssim']:.3f}{tag}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def _band_text(e: dict) -> str:
    """One sentence per dose band: its items, total doses (e⁻/Å²) and defoci (µm)."""
    parts = []
    for b, v in e["bands"].items():
        its = [e["items"][i] for i in v["items"]]
        doses = ", ".join(format(it["dose"], "g") for it in its)
        defoci = ", ".join(format(it["defocus_um"], "g") for it in its)
        parts.append(f"{b} (items {', '.join(map(str, v['items']))}): {doses} e⁻/Å² at defocus {defoci} µm")
    return (f"{len(e['bands'])} dose bands (total dose of the tilt series), items cycled through the bands; "
            + "; ".join(parts) + ". Medians per band are in the summary above; the targets are checked in every band.")


def _bm3d_items(settings: dict) -> str:
    k = settings.get("bm_n_2d", settings["bm_n"])  # reports written before bm_n_2d used bm_n for both
    return "all items" if k is None else f"the first {k} items"


def write_panels(result: dict, folder: str | Path, *, prefix: str = "benchmark_") -> dict[str, Path]:
    """Write one PNG per experiment: the example slice of every method, side by side, titled.

    Needs matplotlib (in ``napari-cryoden[benchmark]``). Files are written atomically as
    ``<folder>/<prefix><experiment>.png``; returns experiment -> path.

    Raises
    ------
    ValueError
        If matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("the panels need matplotlib: pip install 'napari-cryoden[benchmark]'") from None
    from ..io.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, e in result["experiments"].items():
        panels = e["_panels"]
        lo, hi = float(panels["clean"].min()), float(panels["clean"].max())  # sparse slices: no percentiles
        hi = hi if hi > lo else lo + 1e-6
        h, w = panels["clean"].shape
        fig = Figure(figsize=(2.2 * len(panels), 2.2 * h / w + 0.4), dpi=100)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (label, img) in zip(axes, panels.items()):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(label if len(label) < 22 else label.replace(", ", ",\n", 1), fontsize=8)
            ax.set_axis_off()
        fig.tight_layout()
        path = folder / f"{prefix}{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        written[name] = path
    return written
