"""Fine-tuning on the user's data: the three modes, settings checks, checkpoints, saving."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_cryoden.inference import denoise
from napari_cryoden.models import NORMALIZATION, ModelError, available_models, load_model
from napari_cryoden.training import FineTuneConfig, check_settings, fine_tune, save_finetuned
from napari_cryoden.training import finetune
from napari_cryoden.training.checkpoint import CHECKPOINT_NAME
from napari_cryoden.training.export import check_model_name
from napari_cryoden.training.n2v import n2v_manipulate

SHAPE = (40, 32, 32)
SCRATCH = {"architecture": "UpsampleUnet48", "arch_kwargs": {"ch": 4}}


def cfg(**kw) -> FineTuneConfig:
    base = dict(patch=16, batch=2, steps=6, lr=3e-3, val_every=2, val_patches=4, device="cpu", precision="fp32")
    return FineTuneConfig(**{**base, **kw})


def _volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    clean = sum(np.sin(g / (3.0 + i)) for i, g in enumerate(grids)).astype(np.float32)
    noisy = [(clean + rng.normal(0, 1, shape)).astype(np.float32) for _ in range(2)]
    return clean, noisy[0], noisy[1]


@pytest.fixture(scope="module")
def data():
    """clean, even, odd: an anisotropic (40, 32, 32) volume and two noisy halves."""
    return _volume(SHAPE)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_weights(a, b, **tol):
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m: f"{k}: {m}", **tol)


# --------------------------------------------------------------------------------------------
# The three modes learn


@pytest.mark.parametrize("mode", ["n2n", "supervised", "n2v"])
def test_each_mode_lowers_the_validation_loss(data, mode):
    clean, even, odd = data
    target = {"n2n": odd, "supervised": clean, "n2v": None}[mode]
    events = []
    res = fine_tune(even, target, cfg(mode=mode, steps=30, val_every=10), progress=events.append, **SCRATCH)
    assert res.steps_done == 30 and not res.cancelled
    assert [e.step for e in events] == [10, 20, 30] and res.history == events
    assert all(np.isfinite(e.train_loss) and np.isfinite(e.val_loss) for e in events)
    assert res.best_val < res.initial_val, (res.initial_val, [e.val_loss for e in events])
    assert res.best_val == min([res.initial_val] + [e.val_loss for e in events])
    assert res.ndim == 3 and res.parent is None and res.arch_kwargs == {"ch": 4, "final_activation": "identity"}
    assert not res.module.training and next(res.module.parameters()).device.type == "cpu"
    # default: the last max(patch, 10 %) voxels across the longest in-plane axis (Y on a tie), not Z
    assert res.config.val_slab == (16, 32) and res.config.val_axis == 1


def test_bf16_precision_runs(data):
    """bf16 autocast (channels-last on CPUs with native bf16 for large enough patches)."""
    clean, even, odd = data
    res = fine_tune(even, odd, cfg(precision="bf16", steps=2, val_every=1, patch=8), **SCRATCH)
    assert res.steps_done == 2 and all(np.isfinite(e.val_loss) for e in res.history)


@pytest.mark.parametrize("adversarial, patch", [("gan", 32), ("wgangp", 16)])
def test_adversarial_fine_tuning(adversarial, patch):
    clean, noisy, _ = _volume((64, 32, 32), seed=3)
    res = fine_tune(noisy, clean, cfg(mode="supervised", adversarial=adversarial, patch=patch, steps=2,
                                      val_every=1, n_critic=2, disc_base=4, val_axis=0), **SCRATCH)
    losses = res.history[-1].losses
    expected = {"d", "adv", "content"} | ({"gp", "wdist"} if adversarial == "wgangp" else set())
    assert set(losses) == expected and all(np.isfinite(v) for v in losses.values())
    if adversarial == "wgangp":
        assert losses["gp"] >= 0


def test_micrograph_with_the_2d_network(tmp_path, monkeypatch):
    clean, even, odd = _volume((80, 64), seed=5)
    res = fine_tune(even, odd, cfg(patch=32, steps=3, val_every=3), architecture="N2NUNet2D", arch_kwargs={"ch": 4})
    assert res.ndim == 2 and res.config.val_slab == (48, 80) and np.isfinite(res.best_val)
    monkeypatch.setenv("CRYODEN_USER_MODELS", str(tmp_path))
    lm = load_model(save_finetuned(res, "mic-n2n"))
    assert lm.ndim == 2 and lm.card["architecture"] == "N2NUNet2D" and lm.card["overlap"] == 128


def test_nan_voxels_are_replaced_and_nan_loss_raises(data, monkeypatch):
    clean, even, odd = data
    holes = even.copy()
    holes[::7, ::5, ::3] = np.nan
    res = fine_tune(holes, odd, cfg(steps=2, val_every=2), **SCRATCH)
    assert np.isfinite(res.best_val)

    from napari_cryoden.training import patches

    def nan_batch(self, rng):
        x = torch.full((2, 1, 16, 16, 16), float("nan"))
        return x, x, None

    monkeypatch.setattr(patches.PatchSampler, "batch", nan_batch)
    with pytest.raises(ValueError, match="step 1: loss is not finite"):
        fine_tune(even, odd, cfg(), **SCRATCH)


# --------------------------------------------------------------------------------------------
# Settings are checked before training


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(target="short"), r"even half and the odd half differ in shape: \(40, 32, 32\) vs \(40, 32, 30\)"),
        (dict(target=None), "needs a target: the odd half"),
        (dict(config=dict(mode="n2v")), "Noise2Void trains on one volume"),
        (dict(config=dict(patch=12)), "patch 12 is not a multiple of the UpsampleUnet48 stride 8; use e.g. 8 or 16"),
        (dict(config=dict(patch=48)), "patch 48 is larger than the data along axis 0"),
        (dict(config=dict(patch=24)), r"outside the validation slab \(8, 32\) along axis 1 \(8 voxels before it, 0 after\) "
                                      "there is no room for a training patch of 24; use a patch of at most 8"),
        (dict(arch="N2NUNet2D"), r"N2NUNet2D is a 2D \(micrograph\) network and the data is 3D"),
        (dict(source="2d", target="2d"), r"UpsampleUnet48 is a 3D \(tomogram\) network and the data is 2D"),
        (dict(source="nan"), "even half holds no finite values"),
        (dict(config=dict(val_slab=(30, 50))), r"val_slab \(30, 50\) must satisfy 0 <= start < stop <= 32 \(axis 1"),
        (dict(config=dict(val_slab=(0, 8))), r"the validation slab \(0, 8\) along axis 1 is 8 voxels thick, less than "
                                             "the patch 16; use a patch of at most 8"),
        (dict(config=dict(val_axis=3)), "val_axis"),
        (dict(config=dict(mode="supervised", adversarial="gan")), "multiple of 16 and at least 32"),
        (dict(arch=None), "give a model to fine-tune or an architecture"),
    ],
)
def test_check_settings_refuses(data, change, match):
    clean, even, odd = data
    source, target = even, odd
    if change.get("source") == "nan":
        source = np.full(SHAPE, np.nan, np.float32)
    if change.get("source") == "2d":
        source, target = even[0], odd[0]
    if change.get("target") == "short":
        target = odd[:, :, :30]
    elif "target" in change and change["target"] is None:
        target = None
    arch = change.get("arch", "UpsampleUnet48")
    config = cfg(**change.get("config", {}))
    with pytest.raises(ValueError, match=match) as info:
        check_settings(config, source, target, architecture=arch, arch_kwargs={"ch": 4} if arch else None)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=match):  # fine_tune runs the same checks first
        fine_tune(source, target, config, architecture=arch, arch_kwargs={"ch": 4} if arch else None)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(steps=0), "steps must be an integer > 0"),
        (dict(batch=-1), "batch must be an integer > 0"),
        (dict(lr=0.0), "lr must be a number > 0"),
        (dict(rampdown=1.5), "rampdown must be a number >= 0 and <= 1"),
        (dict(max_grad_norm=0.0), "max_grad_norm must be a number > 0"),
        (dict(adversarial="gan"), "needs clean targets"),
        (dict(mode="x"), "mode must be one of n2n, supervised, n2v"),
        (dict(device="tpu"), "device must be"),
        (dict(precision="fp8"), "precision must be one of"),
        (dict(loss="l3"), "loss must be one of"),
        (dict(n2v_mask="cube"), "n2v_mask must be one of"),
        (dict(val_slab=(1.5, 20)), "val_slab must be two integers"),
        (dict(val_axis=-1), "val_axis must be an integer >= 0"),
        (dict(betas=(0.9, 1.0)), "betas must be two numbers in"),
    ],
)
def test_config_refuses_bad_settings_when_built(change, match):
    """What does not depend on the data is refused when the config is built, and by replace()."""
    with pytest.raises(ValueError, match=match) as info:
        cfg(**change)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(cfg(), **change)


def test_config_is_frozen_and_hashable():
    config = cfg(betas=[0.5, 0.9], val_slab=[16, 32])
    assert config.betas == (0.5, 0.9) and config.val_slab == (16, 32)
    assert hash(config) == hash(cfg(betas=(0.5, 0.9), val_slab=(16, 32)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.steps = 10
    assert dataclasses.replace(config, steps=10).steps == 10 and config.steps == 6


def test_check_settings_accepts_good_settings_and_models(data, tiny_model_dir):
    clean, even, odd = data
    check_settings(cfg(), even, odd, architecture="UpsampleUnet48")
    check_settings(cfg(mode="n2v"), even, None, model="tiny-test")
    check_settings(cfg(mode="supervised", val_slab=(0, 16)), even, clean, model="tiny-test")
    with pytest.raises(ModelError, match="no model named 'nope'"):
        check_settings(cfg(), even, odd, model="nope")
    with pytest.raises(ValueError, match="is a UpsampleUnet48, not a N2NUNet2D"):
        check_settings(cfg(), even, odd, model="tiny-test", architecture="N2NUNet2D")


# --------------------------------------------------------------------------------------------
# Checkpoints: resume after a crash, cancel


class Crash(Exception):
    pass


def test_resume_after_a_crash_continues_where_it_stopped(data, tmp_path):
    clean, even, odd = data
    config = cfg(steps=6, val_every=2, log_every=1)
    whole = fine_tune(even, odd, config, **SCRATCH)

    def crash_at_5(event):
        if event.step == 5:
            raise Crash  # like a kill: the last checkpoint is the one of step 4

    with pytest.raises(Crash):
        fine_tune(even, odd, config, workdir=tmp_path, progress=crash_at_5, **SCRATCH)
    saved = json.loads((tmp_path / f"{CHECKPOINT_NAME}.json").read_text())
    assert saved["step"] == 4 and not list(tmp_path.glob("*.part*"))

    with pytest.raises(ValueError, match="holds the checkpoint of an earlier run"):
        fine_tune(even, odd, config, workdir=tmp_path, **SCRATCH)
    seen = []
    res = fine_tune(even, odd, config, workdir=tmp_path, resume=True, progress=seen.append, **SCRATCH)
    assert [e.step for e in seen] == [5, 6] and res.steps_done == 6
    assert [e.step for e in res.history] == [1, 2, 3, 4, 5, 6]
    assert res.checkpoint == tmp_path / f"{CHECKPOINT_NAME}.safetensors"
    # Same weights and losses as the run that was never interrupted (fp32 on the CPU).
    _assert_same_weights(_state(res.module), _state(whole.module), rtol=1e-5, atol=1e-6)
    assert res.best_val == pytest.approx(whole.best_val, rel=1e-5)
    vals = [e.val_loss for e in res.history]
    assert [v is None for v in vals] == [False if e.step % 2 == 0 else True for e in res.history]
    assert [v for v in vals if v is not None] == pytest.approx(
        [e.val_loss for e in whole.history if e.val_loss is not None], rel=1e-5)


def _record_steps(monkeypatch):
    """Record (learning rate, gradient-norm limit) of the network at every training step."""
    from napari_cryoden.training.supervised import SupervisedStep

    seen, original = [], SupervisedStep.__call__

    def call(self, *args, **kwargs):
        seen.append((self.opt_g.param_groups[0]["lr"], self.max_grad_norm))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SupervisedStep, "__call__", call)
    return seen


def test_rampdown_and_gradient_clipping_reach_every_step(data, monkeypatch):
    import math

    from napari_cryoden.training.supervised import rampdown_factor

    clean, even, odd = data
    seen = _record_steps(monkeypatch)
    fine_tune(even, odd, cfg(steps=10, lr=1e-3, rampdown=0.5, max_grad_norm=0.25), **SCRATCH)
    factor = rampdown_factor(10, 0.5)
    assert [lr for lr, _ in seen] == pytest.approx([1e-3 * factor(i) for i in range(10)])
    assert [lr for lr, _ in seen[:6]] == pytest.approx([1e-3] * 6) and 0 < seen[-1][0] < 1e-4
    assert {limit for _, limit in seen} == {0.25}
    seen.clear()
    fine_tune(even, odd, cfg(steps=3, lr=1e-3), **SCRATCH)  # the defaults: constant rate, no clipping
    assert seen == [(1e-3, math.inf)] * 3


def test_rampdown_is_resumed_on_the_same_schedule(data, tmp_path):
    clean, even, odd = data
    config = cfg(steps=8, val_every=2, rampdown=0.5, max_grad_norm=1.0)
    whole = fine_tune(even, odd, config, **SCRATCH)

    def crash_at_7(event):
        if event.step == 7:
            raise Crash  # inside the ramp-down: the checkpoint of step 6 was made at a lowered rate

    with pytest.raises(Crash):
        fine_tune(even, odd, cfg(steps=8, val_every=2, log_every=1, rampdown=0.5, max_grad_norm=1.0),
                  workdir=tmp_path, progress=crash_at_7, **SCRATCH)
    res = fine_tune(even, odd, config, workdir=tmp_path, resume=True, **SCRATCH)
    _assert_same_weights(_state(res.module), _state(whole.module), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"other settings \(rampdown 0.5 -> 0.0, max_grad_norm 1.0 -> None\)"):
        fine_tune(even, odd, cfg(steps=10, val_every=2), workdir=tmp_path, resume=True, **SCRATCH)


def test_checkpoints_from_before_rampdown_still_resume(data, tmp_path):
    from safetensors.torch import load_file, save_file

    clean, even, odd = data
    fine_tune(even, odd, cfg(steps=2), workdir=tmp_path, **SCRATCH)
    path = tmp_path / f"{CHECKPOINT_NAME}.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    state = json.loads(meta["state"])
    for key in ("rampdown", "max_grad_norm"):  # an older checkpoint did not have them
        del state["config"][key]
    meta["state"] = json.dumps(state)
    save_file(load_file(str(path)), str(path), metadata=meta)
    assert fine_tune(even, odd, cfg(steps=4), workdir=tmp_path, resume=True, **SCRATCH).steps_done == 4


def test_resume_refuses_other_settings_or_data(data, tmp_path):
    clean, even, odd = data
    fine_tune(even, odd, cfg(steps=2), workdir=tmp_path, **SCRATCH)
    with pytest.raises(ValueError, match=r"other settings \(lr 0.003 -> 0.01\)"):
        fine_tune(even, odd, cfg(steps=4, lr=0.01), workdir=tmp_path, resume=True, **SCRATCH)
    with pytest.raises(ValueError, match="other data"):
        fine_tune(odd, even, cfg(steps=4), workdir=tmp_path, resume=True, **SCRATCH)
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        fine_tune(even, odd, cfg(), workdir=tmp_path / "empty", resume=True, **SCRATCH)
    more = fine_tune(even, odd, cfg(steps=4), workdir=tmp_path, resume=True, **SCRATCH)  # more steps is fine
    assert more.steps_done == 4


def test_cancel_returns_the_best_weights_and_can_be_resumed(data, tmp_path):
    from safetensors.torch import load_file

    clean, even, odd = data
    polls = iter(range(100))
    res = fine_tune(even, odd, cfg(steps=50, val_every=2), workdir=tmp_path, cancel=lambda: next(polls) >= 3,
                    **SCRATCH)
    assert res.cancelled and res.steps_done == 3
    assert [e.step for e in res.history] == [2, 3]  # the cancelled step is validated too
    vals = [res.initial_val] + [e.val_loss for e in res.history]
    assert res.best_val == min(vals) and res.best_step == [0, 2, 3][vals.index(min(vals))]
    tensors = load_file(str(res.checkpoint))
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    _assert_same_weights(_state(res.module), best, rtol=0, atol=0)
    resumed = fine_tune(even, odd, cfg(steps=5, val_every=2), workdir=tmp_path, resume=True, **SCRATCH)
    assert resumed.steps_done == 5 and [e.step for e in resumed.history] == [2, 3, 4, 5]


def test_cancel_before_the_first_step_keeps_the_starting_weights(data, tmp_path):
    clean, even, odd = data
    rng_state = torch.get_rng_state()
    res = fine_tune(even, odd, cfg(), workdir=tmp_path / "w", cancel=lambda: True, **SCRATCH)
    assert res.cancelled and res.steps_done == 0 and res.history == [] and res.best_step == 0
    assert res.best_val == res.initial_val and res.checkpoint is None and not (tmp_path / "w").exists()
    assert torch.equal(torch.get_rng_state(), rng_state)  # seeded without touching the global generator


def test_preview_gets_a_copy_in_eval_mode(data):
    clean, even, odd = data
    seen = []

    def preview(module):
        seen.append((module.training, torch.is_grad_enabled(), any(p.requires_grad for p in module.parameters())))
        with torch.no_grad():
            assert module(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)

    fine_tune(even, odd, cfg(steps=4, preview_every=2), preview=preview, **SCRATCH)
    assert seen == [(False, False, False)] * 2


def test_iter_fine_tune_yields_the_events_of_fine_tune_and_returns_its_result(data):
    """The generator yields what fine_tune passes to its callbacks, at the same steps, and returns
    the same result; the weights are the same bit for bit."""
    clean, even, odd = data
    config = cfg(steps=4, val_every=2, log_every=1, preview_every=2)
    events, previews = [], []
    res = fine_tune(even, odd, config, progress=events.append, preview=lambda m: previews.append(m.training),
                    **SCRATCH)

    yielded = []
    job = finetune.iter_fine_tune(even, odd, config, **SCRATCH)
    while True:
        try:
            yielded.append(next(job))
        except StopIteration as stop:
            got = stop.value
            break
    reports = [e for e in yielded if isinstance(e, finetune.TrainEvent)]
    weights = [e for e in yielded if isinstance(e, finetune.PreviewWeights)]
    assert [e.step for e in reports] == [e.step for e in events] == [1, 2, 3, 4]
    assert [e.val_loss is not None for e in reports] == [False, True, False, True]
    assert [e.step for e in weights] == [2, 4] and previews == [False, False]
    assert all(not w.module.training and not any(p.requires_grad for p in w.module.parameters()) for w in weights)
    assert [type(e).__name__ for e in yielded] == ["TrainEvent", "TrainEvent", "PreviewWeights", "TrainEvent",
                                                   "TrainEvent", "PreviewWeights"]
    assert isinstance(got, finetune.FineTuneResult) and got.steps_done == 4 and got.history == reports
    assert got.config == res.config and got.config.val_slab == (16, 32) and config.val_slab is None
    _assert_same_weights(_state(got.module), _state(res.module), rtol=0, atol=0)

    quiet = list(finetune.iter_fine_tune(even, odd, config, preview_every=0, **SCRATCH))
    assert not any(isinstance(e, finetune.PreviewWeights) for e in quiet) and len(quiet) == 4


# --------------------------------------------------------------------------------------------
# From a registry model, and saving


def test_fine_tune_a_registry_model_and_save_it(data, tiny_model_dir, rng):
    clean, even, odd = data
    parent = load_model("tiny-test")
    before = _state(parent.module)
    res = fine_tune(even, None, cfg(mode="n2v", steps=2), model=parent)
    _assert_same_weights(_state(parent.module), before, rtol=0, atol=0)  # the parent is not changed
    assert res.parent == "tiny-test" and res.architecture == "UpsampleUnet48"

    path = save_finetuned(res, "my-n2v.v1", card_extra={"voxel_size_A": 13.5, "data": {"input": "x.mrc"}})
    assert path == tiny_model_dir / "my-n2v.v1.safetensors"
    card = available_models()["my-n2v.v1"]
    assert card["parent"] == "tiny-test" and card["normalization"] == NORMALIZATION
    assert card["voxel_size_A"] == 13.5 and card["data"] == {"input": "x.mrc"} and card["overlap"] == 24
    t = card["training"]
    assert t["mode"] == "n2v" and t["steps"] == 2 and t["val_loss_best"] == res.best_val
    assert t["data_shape"] == list(SHAPE) and t["val_slab"] == [16, 32]
    lm = load_model("my-n2v.v1")
    _assert_same_weights(_state(lm.module), _state(res.module), rtol=0, atol=0)
    vol = rng.normal(size=(12, 24, 24)).astype(np.float32)
    assert np.isfinite(denoise(vol, lm, device="cpu", precision="fp32")).all()

    with pytest.raises(ValueError, match="exists"):
        save_finetuned(res, "my-n2v.v1")
    save_finetuned(res, "my-n2v.v1", overwrite=True)


@pytest.mark.parametrize("name", ["", "a b", "../evil", ".hidden", "x/y", "é", "a" * 101])
def test_bad_model_names_are_refused(name, tmp_path):
    with pytest.raises(ValueError, match="model name must be"):
        check_model_name(name, folder=tmp_path)


def test_builtin_names_are_never_overwritten(tmp_path):
    with pytest.raises(ValueError, match="built-in model"):
        check_model_name("upsampleunet48-gan", folder=tmp_path, overwrite=True)


def test_card_extra_cannot_replace_the_essentials(data, tmp_path):
    clean, even, odd = data
    res = fine_tune(even, odd, cfg(steps=1, val_every=1), **SCRATCH)
    with pytest.raises(ValueError, match="may not set architecture"):
        save_finetuned(res, "m", folder=tmp_path, card_extra={"architecture": "Unet48"})
    with pytest.raises(ValueError, match="voxel_size_A must be a positive number"):
        save_finetuned(res, "m", folder=tmp_path, card_extra={"voxel_size_A": -1})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# Noise2Void blind spots


def test_n2v_blind_spots_take_a_neighbours_value():
    patch = np.arange(16**3, dtype=np.float32).reshape(16, 16, 16)  # every value unique
    masked, mask = n2v_manipulate(patch, np.random.default_rng(0), fraction=0.01, radius=2, blind=0)
    pos = np.argwhere(mask == 1)
    assert len(pos) == round(0.01 * patch.size) and mask.sum() == len(pos)
    changed = masked != patch
    assert not changed[mask == 0].any()
    for p in pos:
        src = np.argwhere(patch == masked[tuple(p)])[0]
        assert 0 < np.abs(src - p).max() <= 2  # a neighbour in the 5^3 window, never itself


def test_structured_blind_spots_hide_the_whole_cube():
    """blind=1: the 3^3 cube around each centre is replaced by values from anywhere in the
    patch, the loss mask stays on the centres, and nothing else changes."""
    patch = np.arange(20**3, dtype=np.float32).reshape(20, 20, 20)
    masked, mask = n2v_manipulate(patch, np.random.default_rng(1), fraction=0.002, radius=2, blind=1)
    centres = np.argwhere(mask == 1)
    assert len(centres) == round(0.002 * patch.size)
    cube = np.zeros(patch.shape, bool)
    for z, y, x in centres:
        cube[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = True
    changed = masked != patch
    assert not changed[~cube].any()
    assert changed[cube].mean() > 0.95  # a donor equal to the voxel itself is rare
    donors = masked[cube].astype(int)
    far = [np.abs(np.argwhere(patch == v)[0] - c).max() > 1 for v, c in zip(donors[:50], np.argwhere(cube)[:50])]
    assert np.mean(far) > 0.8  # donors come from the whole patch, not the neighbourhood


def test_structured_offsets_hide_exactly_those_neighbours():
    patch = np.arange(24**3, dtype=np.float32).reshape(24, 24, 24)
    offsets = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 2], [0, 0, -2]])
    masked, mask = n2v_manipulate(patch, np.random.default_rng(2), fraction=0.001, offsets=offsets)
    centres = np.argwhere(mask == 1)
    hidden = np.zeros(patch.shape, bool)
    for c in centres:
        for o in offsets:
            hidden[tuple(np.clip(c + o, 0, 23))] = True
    changed = masked != patch
    assert not changed[~hidden].any()
    assert changed[hidden].mean() > 0.95
    # a single zero offset is classic Noise2Void: a neighbour's value at the blind spot only
    masked, mask = n2v_manipulate(patch, np.random.default_rng(2), fraction=0.001, offsets=np.zeros((1, 3), int))
    assert ((masked != patch) == (mask == 1)).all()


def _backprojected_noise(shape, rng):
    """Noise correlated along Z and X as in a back-projection: white noise smoothed along Z and
    high-passed along X (a [-1, 2, -1] kernel), independent along Y."""
    from scipy import ndimage

    white = rng.normal(size=shape)
    z = ndimage.convolve1d(white, [0.5, 1.0, 0.5], axis=0, mode="wrap")
    return ndimage.convolve1d(z, [-1.0, 2.0, -1.0], axis=2, mode="wrap")


def test_noise_correlation_mask_finds_the_correlated_neighbours(rng):
    from napari_cryoden.training.n2v import noise_correlation_mask

    offsets = noise_correlation_mask(_backprojected_noise((64, 64, 64), rng))
    got = {tuple(int(v) for v in o) for o in offsets}
    assert tuple(offsets[0]) == (0, 0, 0)
    # the kernels couple |dz| <= 2 and |dx| <= 2 (correlations up to 0.67), and nothing along Y
    assert {(1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, 0, 2), (1, 0, 1), (2, 0, 0)} <= got
    assert all(o[1] == 0 for o in got)
    assert all(abs(o[0]) <= 2 and abs(o[2]) <= 2 for o in got)
    assert {tuple(-np.array(o)) for o in got} == got
    # independent noise: the blind spot is the voxel itself
    assert noise_correlation_mask(rng.normal(size=(48, 48, 48))).tolist() == [[0, 0, 0]]
    assert noise_correlation_mask(rng.normal(size=(96, 96))).tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="constant"):
        noise_correlation_mask(np.ones((16, 16, 16)))
    with pytest.raises(ValueError, match="2D or 3D"):
        noise_correlation_mask(np.ones(16))


def test_n2v_auto_mask_is_used_and_recorded(rng, tmp_path):
    noisy = (_backprojected_noise((40, 40, 40), rng) + 0.0).astype(np.float32)
    res = fine_tune(noisy, None, cfg(mode="n2v", steps=2, val_every=1, patch=16, batch=2), **SCRATCH)
    assert res.config.n2v_mask == "auto"
    card = json.loads(save_finetuned(res, "n2v-auto", folder=tmp_path).with_suffix(".json").read_text())
    assert card["training"]["n2v_mask"] == "auto"
    with pytest.raises(ValueError, match="n2v_mask must be one of"):
        check_settings(cfg(mode="n2v", n2v_mask="cube"), noisy, None, **SCRATCH)


# ------------------------------------------------------------------ defaults that fit the data (issue 21)
@pytest.mark.parametrize("shape, stride, ndim, axis, patch", [
    ((36, 206, 94), 8, 3, 1, 32),  # the microtubule crop: Z too thin for 48, the slab across Y
    ((44, 206, 94), 8, 3, 1, 40),
    ((64, 128, 128), 8, 3, 1, 48),
    ((512, 512), 32, 2, 0, 64),  # a micrograph: a multiple of the 2D stride
    ((96, 100), 32, 2, 1, 32),
])
def test_default_patch_and_validation_axis_fit_the_data(shape, stride, ndim, axis, patch):
    assert finetune.validation_axis(shape) == axis
    assert finetune.default_patch(shape, stride, ndim) == patch


@pytest.mark.parametrize("shape, arch", [((36, 206, 94), SCRATCH), ((64, 128, 128), SCRATCH),
                                         ((512, 512), {"architecture": "N2NUNet2D", "arch_kwargs": {"ch": 4}})])
def test_defaults_train_thin_tomograms_and_micrographs(shape, arch):
    _, even, odd = _volume(shape, seed=2)
    res = fine_tune(even, odd, FineTuneConfig(steps=1, val_every=1, batch=1, val_patches=1, device="cpu",
                                              precision="fp32"), **arch)
    axis = finetune.validation_axis(shape)
    patch = finetune.default_patch(shape, 32 if len(shape) == 2 else 8, len(shape))
    n = shape[axis]
    assert (res.config.val_axis, res.config.patch) == (axis, patch)
    assert res.config.val_slab == (n - max(patch, -(-n // 10)), n)
    assert res.steps_done == 1 and np.isfinite(res.best_val)
