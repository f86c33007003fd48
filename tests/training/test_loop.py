"""The one training loop (training.loop.iter_train) and the checks every training config shares."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import napari_cryoden.training.loop as loop_mod
from napari_cryoden.training.checks import check_betas, check_number
from napari_cryoden.training.finetune import FineTuneConfig
from napari_cryoden.training.loop import (
    Checkpoint, Done, LoopConfig, Losses, iter_train, rampdown_factor,
)
from napari_cryoden.training.supervised import TrainConfig


def _counter():
    """An update whose loss is the number of the step (1, 2, ...)."""
    calls = {"n": 0}

    def update():
        calls["n"] += 1
        return {"content": float(calls["n"])}

    return update, calls


def _kinds(events):
    return [(type(e).__name__, e.step) for e in events]


def test_events_come_in_the_documented_order_and_cadence():
    update, _ = _counter()
    cfg = LoopConfig(steps=4, log_every=1, val_every=2, checkpoint_every=3, preview_every=2)
    events = list(iter_train(update, cfg, validate=lambda: "v"))
    assert _kinds(events) == [
        ("Step", 1), ("Losses", 1),
        ("Step", 2), ("Validation", 2), ("Losses", 2), ("Preview", 2),
        ("Step", 3), ("Losses", 3), ("Checkpoint", 3),
        ("Step", 4), ("Validation", 4), ("Losses", 4), ("Checkpoint", 4), ("Preview", 4),
        ("Done", 4),
    ]
    losses = [e for e in events if isinstance(e, Losses)]
    assert [e.validation for e in losses] == [None, "v", None, "v"]
    assert events[-1].reason == "steps"


def test_losses_are_the_means_since_the_last_report_and_a_resumed_run_counts_on():
    update, calls = _counter()
    events = list(iter_train(update, LoopConfig(steps=7, log_every=3), start=2, seconds_before=100.0))
    reports = [e for e in events if isinstance(e, Losses)]
    # steps 3..7 run (5 updates, losses 1..5): reports at 3 (1 update), 6 (3 updates), 7 (the last)
    assert [(e.step, e.count, e.means["content"]) for e in reports] == [(3, 1, 1.0), (6, 3, 3.0), (7, 1, 5.0)]
    assert calls["n"] == 5 and all(e.seconds >= 100.0 for e in reports)
    with pytest.raises(ValueError, match="from 0 to 7"):
        next(iter_train(update, LoopConfig(steps=7), start=8))


def test_the_learning_rate_follows_the_rampdown_also_when_resumed():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    seen = []

    def update():
        seen.append(opt.param_groups[0]["lr"])
        return {}

    list(iter_train(update, LoopConfig(steps=8, rampdown=0.5), optimizers=[opt]))
    factor = rampdown_factor(8, 0.5)
    assert seen == pytest.approx([factor(i) for i in range(8)])
    assert seen[:4] == [1.0] * 4 and seen[-1] < seen[-2] < 1.0
    opt.param_groups[0]["lr"], seen[:] = 1.0, []
    list(iter_train(update, LoopConfig(steps=8, rampdown=0.5), optimizers=[opt], start=5))
    assert seen == pytest.approx([factor(i) for i in range(5, 8)])


def test_cancel_and_budget_end_the_run_with_one_checkpoint_of_the_last_step(monkeypatch):
    update, calls = _counter()
    stop = iter([False, False, True])
    events = list(iter_train(update, LoopConfig(steps=10, checkpoint_every=5), cancel=lambda: next(stop)))
    assert _kinds(events)[-2:] == [("Checkpoint", 2), ("Done", 2)] and events[-1].reason == "cancelled"

    class Clock:  # one second per reading
        t = 0.0

        def perf_counter(self):
            Clock.t += 1.0
            return Clock.t

    monkeypatch.setattr(loop_mod, "time", Clock())
    events = list(iter_train(update, LoopConfig(steps=10, seconds=3.5)))
    done = events[-1]
    assert isinstance(done, Done) and done.reason == "budget" and 0 < done.step < 10
    assert isinstance(events[-2], Checkpoint) and events[-2].step == done.step
    # nothing new since the last checkpoint: no second one
    stop = iter([False, True])
    events = list(iter_train(update, LoopConfig(steps=10, checkpoint_every=1), cancel=lambda: next(stop)))
    assert [e.step for e in events if isinstance(e, Checkpoint)] == [1]


def test_divergence_and_out_of_memory_are_one_line_errors():
    def diverged():
        raise ValueError("loss is nan")

    with pytest.raises(ValueError, match=r"^training stopped at step 1: loss is nan$"):
        list(iter_train(diverged, LoopConfig(steps=3)))

    def oom():
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000 bytes")

    with pytest.raises(MemoryError, match=r"out of memory at training step 1 \(batch 8, patch 64\); lower"):
        list(iter_train(oom, LoopConfig(steps=3), describe=lambda: "batch 8, patch 64"))

    def other():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(iter_train(other, LoopConfig(steps=3)))


@pytest.mark.parametrize("kw, match", [
    ({"steps": 0}, "steps must be an integer > 0, got 0"),
    ({"steps": 2.5}, "steps must be an integer > 0"),
    ({"steps": True}, "steps must be an integer > 0"),
    ({"steps": 3, "log_every": -1}, "log_every must be an integer >= 0"),
    ({"steps": 3, "rampdown": 1.5}, "rampdown must be a number >= 0 and <= 1"),
    ({"steps": 3, "seconds": 0}, "seconds must be a number > 0"),
    ({"steps": 3, "seconds": float("inf")}, "seconds must be a number > 0"),
])
def test_loop_config_refuses_bad_values_when_built(kw, match):
    with pytest.raises(ValueError, match=match):
        LoopConfig(**kw)


@pytest.mark.parametrize("kw, match", [
    ({"steps": 0}, "steps must be an integer > 0"),
    ({"mode": "vae"}, "mode must be one of ae, gan, wgangp, got 'vae'"),
    ({"loss": "l3"}, "loss must be one of l1, l2, graylevel"),
    ({"lr": 0}, "lr must be a number > 0"),
    ({"lr_d": float("nan")}, "lr_d must be a number > 0"),
    ({"n_critic": 0}, "n_critic must be an integer > 0"),
    ({"gp_weight": -1}, "gp_weight must be a number >= 0"),
    ({"rampdown": -0.1}, "rampdown must be a number >= 0 and <= 1"),
    ({"betas": (0.5, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
    ({"device": "tpu"}, "device must be 'auto', 'cpu' or 'cuda'"),
    ({"precision": "fp8"}, "precision must be one of auto, fp32, bf16, fp16"),
    ({"weight_clip": -1e-3}, "weight_clip must be a number > 0"),
])
def test_train_config_refuses_bad_values_when_built(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_configs_are_frozen_and_keep_their_betas_as_tuples():
    for cfg in (TrainConfig(betas=[0.5, 0.9]), FineTuneConfig(betas=[0.5, 0.9]), LoopConfig(steps=2)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.steps = 5
    assert TrainConfig(betas=[0.5, 0.9]).betas == (0.5, 0.9) == FineTuneConfig(betas=[0.5, 0.9]).betas
    assert dataclasses.replace(TrainConfig(), steps=7).steps == 7
    with pytest.raises(ValueError, match="steps must be"):
        dataclasses.replace(TrainConfig(), steps=-7)


def test_one_number_check_for_every_config():
    check_number("x", 3.0, integer=True, positive=True)
    for bad in (float("nan"), "3", None, True):
        with pytest.raises(ValueError, match="x must be a number"):
            check_number("x", bad)
    assert check_betas(None) is None and check_betas((0, 0.9)) == (0.0, 0.9)
    # the same setting gets the same message from every config
    messages = set()
    for make in (lambda: LoopConfig(steps=-1), lambda: TrainConfig(steps=-1), lambda: FineTuneConfig(steps=-1)):
        with pytest.raises(ValueError) as info:
            make()
        messages.add(str(info.value))
    assert messages == {"steps must be an integer > 0, got -1"}


def test_drive_hands_on_every_event_returns_the_result_and_closes_the_generator():
    """loop.drive: each yielded event goes to the handler in order, the generator's return
    value comes back, and a handler that raises closes the generator (its finally runs)."""
    from napari_cryoden.training.loop import drive

    closed = []

    def job(n):
        try:
            for i in range(n):
                yield i
            return "done"
        finally:
            closed.append(n)

    seen = []
    assert drive(job(3), seen.append) == "done" and seen == [0, 1, 2] and closed == [3]

    def stop(event):
        if event == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive(job(5), stop)
    assert closed == [3, 5]
