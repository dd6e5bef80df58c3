"""--time-budget on a fake clock: the run's every decision on time is replayed exactly, whatever
the machine's own speed. Digits at batch 64 has 20 steps an epoch; the clock moves only when a
test moves it (steps, here), so evaluation takes no time and each expected plan below is worked
out by hand from budget.py's rule: 97% of what is left, after 1% of the budget and the final
outputs (the test split's evaluation and the last plot, 0.3 s until one is timed), in whole
epochs, then what is left of one."""

import json
import logging

import pytest
import torch

from vitkit.train import budget, outputs, trainer
from vitkit.train.optim import Schedule
from vitkit.train.recipe import Recipe
from vitkit.train.trainer import Run, start, train

FAST = dict(batch_size=64, workers=0, precision="fp32")


class FakeClock:
    """Seconds that pass only when `advance` says."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def hook(monkeypatch):
    """`hook(fn)` installs a step hook for this test only."""
    monkeypatch.setattr(trainer, "STEP_HOOKS", [])
    return trainer.STEP_HOOKS.append


def steps_taking(clock: FakeClock, seconds):
    """A hook: each step takes `seconds(run)` on the fake clock (a step that a stop keeps from
    running takes none)."""
    return lambda run: None if run.stop.requested else clock.advance(seconds(run))


def budget_run(seconds: float, clock: FakeClock, out, **recipe) -> dict:
    fields = {"time_budget": seconds, **FAST, **recipe}
    return train("digits", Recipe(**fields), set(fields), out=out, clock=clock)


def plans(caplog) -> list[int]:
    return [int(r.getMessage().split("-> ")[1].split()[0]) for r in caplog.records if "-> " in r.getMessage()]


def history(run_dir) -> list[int]:
    """The steps of each epoch in the run's metrics."""
    return [json.loads(line)["steps"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_budget_run_plans_after_each_epoch_and_ends_on_its_plan(tmp_path, hook, caplog):
    """0.125 s a step, 10 s: after epoch 1 (2.5 s), 97% of 7.1 s is two epochs and 15 steps (75);
    once the first plot is timed (0 s here), 97% of 4.9 s after epoch 2 is one epoch and 18 steps
    (78); after epoch 3 again 78. The run ends there, in its fourth epoch, at 9.75 s."""
    caplog.set_level(logging.INFO, logger="vitkit")
    clock = FakeClock()
    hook(steps_taking(clock, lambda run: 0.125))
    result = budget_run(10, clock, tmp_path / "run")
    assert plans(caplog) == [75, 78, 78]
    assert (result["steps"], result["epochs"], result["seconds"]) == (78, 4, 9.75)
    assert history(tmp_path / "run") == [20, 20, 20, 18]


def test_a_budget_run_whose_steps_slow_down_plans_fewer_steps(tmp_path, hook, caplog):
    """20 s; the steps take 0.25 s instead of 0.125 s from epoch 3 on: the plan made after epoch 3
    sees them and shrinks from 154 steps to 98 (97% of 9.8 s left: one epoch of 5 s, then 18
    steps), and the run ends on it, at 19.5 s."""
    caplog.set_level(logging.INFO, logger="vitkit")
    clock = FakeClock()
    hook(steps_taking(clock, lambda run: 0.25 if run.progress.epoch >= 2 else 0.125))
    result = budget_run(20, clock, tmp_path / "run")
    assert plans(caplog) == [151, 154, 98, 98]
    assert (result["steps"], result["seconds"]) == (98, 19.5)
    assert history(tmp_path / "run") == [20, 20, 20, 20, 18]


def test_the_backstop_ends_a_run_whose_steps_slow_down_within_an_epoch(tmp_path, hook, caplog):
    """Steps of 2 s once less than 5 s are left before the deadline (9.6 s after the first plan:
    from step 38 on): the first slow step is judged with the fast one before it (the shorter of the
    two) and the run goes on; after the second, one more would pass the deadline, so it is the
    last: step 39 of the 75 planned, at 8.625 s. The checkpoint and the metrics say so."""
    clock = FakeClock()
    hook(steps_taking(clock, lambda run: 2.0 if run.budget.deadline - run.budget.elapsed() < 5 else 0.125))
    result = budget_run(10, clock, tmp_path / "run")
    assert (result["steps"], result["epochs"], result["seconds"]) == (39, 2, 8.625)
    assert "the steps ran slower than planned; ending after step 39 of 75" in caplog.text
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["budget"]["steps"] == 39 and history(tmp_path / "run") == [20, 19]
    # the epoch's record has the rate its last step ran at (step 39 of a 75-step cosine), not the
    # shortened run's end of the schedule
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["lr"] == pytest.approx(Schedule(3e-3, 1e-5, warmup=60).lr(38, 75))


def test_one_slow_step_near_the_deadline_does_not_end_a_run(tmp_path, hook):
    """One 2 s hiccup with less than 3 s left (before step 57): judged with the step before it,
    it leaves time for more; the plan after epoch 3 (97% of 0.525 s at its 0.219 s a step) adds
    two steps, and the run ends on them."""
    clock, hiccups = FakeClock(), []

    def step_seconds(run: Run) -> float:
        if not hiccups and run.budget.deadline - run.budget.elapsed() < 3:
            hiccups.append(run.progress.global_step)
            return 2.0
        return 0.125

    hook(steps_taking(clock, step_seconds))
    result = budget_run(10, clock, tmp_path / "run")
    assert hiccups == [56] and result["steps"] == 62


def stop_at(epoch: int, step: int):
    """A hook that asks the run to stop (as SIGINT/SIGTERM would) before that step."""
    def stop(run: Run) -> None:
        if (run.progress.epoch + 1, run.progress.step) == (epoch, step):
            run.stop.requested = True
    return stop


def test_a_resumed_run_keeps_its_deadline(tmp_path, hook):
    """Stopped at 3.5 s, after the first plan (deadline 9.6 s); resumed, its steps take 2 s: the
    saved deadline ends it after its third step, at 9.5 s (without it, all six slow steps would run,
    to 15.5 s)."""
    clock = FakeClock()
    hook(stop_at(2, 8))
    hook(steps_taking(clock, lambda run: 0.125))
    with pytest.raises(KeyboardInterrupt):
        budget_run(10, clock, tmp_path / "run")
    trainer.STEP_HOOKS[:] = [steps_taking(clock, lambda run: 2.0)]
    result = train(resume=tmp_path / "run", clock=clock)
    assert (result["steps"], result["seconds"]) == (31, 9.5)


def test_a_budget_keeps_the_last_plots_time_for_the_end(tmp_path, hook, monkeypatch, caplog):
    """A plot of 1 s (on the fake clock): the first plan, before any plot, keeps 0.3 s for the last
    one; the next keeps the 1 s timed (with the evaluation's 1 s, which the plot also took, and the
    test split's 2.5 times that): 95 steps in 20 s, where keeping 0.3 s would plan 100."""
    caplog.set_level(logging.INFO, logger="vitkit")
    clock = FakeClock()
    draw = outputs.draw_curves
    monkeypatch.setattr(outputs, "draw_curves", lambda *args: (clock.advance(1.0), draw(*args)))
    hook(stop_at(3, 1))
    hook(steps_taking(clock, lambda run: 0.125))
    with pytest.raises(KeyboardInterrupt):
        budget_run(20, clock, tmp_path / "run")
    assert plans(caplog) == [151, 95]


def test_a_run_stopped_before_its_first_plan_plans_after_resuming(tmp_path, hook, caplog):
    caplog.set_level(logging.INFO, logger="vitkit")
    clock = FakeClock()
    hook(stop_at(1, 3))
    hook(steps_taking(clock, lambda run: 0.125))
    with pytest.raises(KeyboardInterrupt):
        budget_run(10, clock, tmp_path / "run")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["budget"]["steps"] is None
    trainer.STEP_HOOKS[:] = [steps_taking(clock, lambda run: 0.125)]
    result = train(resume=tmp_path / "run", clock=clock)
    assert plans(caplog) and result["steps"] == plans(caplog)[-1]
    assert len(history(tmp_path / "run")) == result["epochs"]


def test_a_resumed_run_keeps_its_plan_until_its_epoch_ends(tmp_path, hook, caplog):
    clock = FakeClock()
    hook(stop_at(2, 1))
    hook(steps_taking(clock, lambda run: 0.125))
    with pytest.raises(KeyboardInterrupt):
        budget_run(3600, clock, tmp_path / "run")
    planned = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["budget"]["steps"]
    caplog.set_level(logging.INFO, logger="vitkit")
    caplog.clear()
    trainer.STEP_HOOKS[:] = [stop_at(2, 5), steps_taking(clock, lambda run: 0.125)]
    resumed = start(resume=tmp_path / "run", clock=clock)
    assert resumed.budget.steps == planned > 40
    with pytest.raises(KeyboardInterrupt):
        resumed.fit()
    assert not plans(caplog)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["budget"]["steps"] == planned


def test_a_checkpoint_that_kept_its_epochs_in_its_progress_resumes(tmp_path, hook):
    """Earlier versions saved the run's length in its progress, some as epochs alone."""
    hook(stop_at(2, 1))
    fields = {"epochs": 3, **FAST}
    with pytest.raises(KeyboardInterrupt):
        train("digits", Recipe(**fields), set(fields), out=tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    del saved["budget"]
    saved["progress"] |= {"epochs": 3, "elapsed": 1.0, "deadline": float("inf")}
    torch.save(saved, tmp_path / "run" / "checkpoint.pt")
    trainer.STEP_HOOKS.clear()
    resumed = start(resume=tmp_path / "run")
    assert resumed.budget.steps == 3 * resumed.plan.steps_per_epoch
    assert resumed.fit()["steps"] == 3 * resumed.plan.steps_per_epoch


def test_the_plan_counts_steps_and_cuts_the_last_epoch_short():
    plan = lambda **kw: budget.plan_steps(100, 10, step_seconds=1.0, eval_seconds=2.0, **kw)  # noqa: E731
    # 97% of the 89 s left (1% of the budget is kept for the end), at 1 s a step and 2 s an
    # evaluation: 7 whole epochs (84 s), then 2.33 s: no more than its evaluation
    assert plan(elapsed=10, steps_done=10) == 10 + 70
    # mid-epoch, the rest of the epoch in progress is counted first
    assert plan(elapsed=10, steps_done=13) == 20 + 60 + 3
    # too little left to finish the epoch in progress: it is cut short
    assert plan(elapsed=94, steps_done=13) == 13 + 2
    # the test split's evaluation at the end (5 s) is kept out of the plan: 6 epochs, then 7 steps
    assert plan(elapsed=10, steps_done=10, final_seconds=5) == 10 + 60 + 7


def test_the_first_epochs_plan_leaves_out_what_its_first_steps_spent_compiling():
    b = budget.Budget(100, 25, None, eval_steps=1, test_share=0)
    b.step_times = [9.0] * 5 + [1.0] * 20  # an epoch of 25 steps: 45 s, of which 40 s compiling
    assert b.steady(45.0) == pytest.approx(5.0)
