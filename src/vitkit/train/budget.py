"""How long a run is, in steps and in seconds: one object with one clock.

A run's length is its recipe's epochs, or with `--time-budget` the optimizer steps that fit in
the budget. The plan counts steps, not epochs, so that a run spends its whole budget: the last
epoch may be cut short (it still ends with an evaluation). It is made from the first timed steps
(so the cosine schedule knows its length early), then again after every epoch from that epoch's
own speed and evaluation time (the first epoch less what its first steps spent compiling, which
later epochs do not pay), so a machine that slows down mid-run does not overrun the budget.
Steps that slow down within an epoch meet the backstop: once one more step would pass the
deadline, the run ends. The plan and the deadline are saved in every checkpoint, so a resumed
run keeps them until its next epoch ends; a run stopped before it had a plan makes one after
resuming. Every reading of the clock is here, so tests run a budget on a fake clock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from vitkit.distributed import World

log = logging.getLogger("vitkit")
SAFETY = 0.97  # of what is left at each plan: the plan's estimates are not exact
END = 0.01  # of the budget, for the run's last outputs and the interpreter's start before the clock
CALIBRATION_STEPS = (5, 25)  # steps 5..24 are timed: the first ones include start-up and compilation
EVAL_SPEEDUP = 2.5  # before one is timed, evaluation is guessed this much faster per image (forward only)
PLOT_EVERY_S = 10  # curves.png: after every epoch, but at most this often
PLOT_GUESS_S = 0.3  # a plot's time until one is timed (0.26 s alone on a 2-core CPU)


class Budget:
    """The run's length (`steps`, None until a budget run first plans) and its clock. The run calls
    it at an epoch's start, after each step and after each epoch's evaluation; it decides when the
    run ends. With several processes, rank 0's clock decides for all of them."""

    def __init__(self, seconds: float | None, steps_per_epoch: int, steps: int | None, eval_steps: float,
                 test_share: float, world: World | None = None, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None):
        """`seconds`: the budget (None: a run of fixed `steps`); `eval_steps`: the validation set in
        training batches; `test_share`: the test split's size against validation's; `started`: when
        the run began on `clock` (before its data was read), else now."""
        self.seconds, self.steps_per_epoch, self.steps = seconds, steps_per_epoch, steps
        self.eval_steps, self.test_share = eval_steps, test_share
        self.world, self.clock = world or World(), clock
        self.earlier = 0.0  # seconds spent by earlier attempts of a resumed run
        self.deadline = math.inf  # elapsed seconds by which training must stop (the last plan's)
        self.started = clock() if started is None else started
        self.mark = clock()
        self.last_plot = -math.inf
        self.step_times: list[float] = []  # this attempt's steps, wall seconds (loading included)
        self.epoch_ended: float | None = None  # elapsed() when this attempt's last epoch ended
        self.plot_seconds = PLOT_GUESS_S

    # -- reading the clock ---------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def elapsed(self) -> float:
        """Seconds since the run began, earlier attempts included."""
        return self.earlier + self.clock() - self.started

    @property
    def epochs(self) -> int | None:
        return None if self.steps is None else math.ceil(self.steps / self.steps_per_epoch)

    def ends_at(self, global_step: int) -> bool:
        return self.steps is not None and global_step >= self.steps

    # -- the three points the run calls --------------------------------------------------------------
    def begin_epoch(self) -> None:
        self.mark = self.clock()

    def end_step(self, global_step: int) -> None:
        """Time the step (from the last one, loading included). A budget run plans once its first
        steps are timed; planned, it ends here if one more step as long as the shorter of the last
        two (one hiccup is not a slowdown) would pass the deadline."""
        now = self.clock()
        wall, self.mark = now - self.mark, now
        shorter = min(wall, self.step_times[-1]) if self.step_times else 0.0  # an attempt's first step: its clock alone
        self.step_times.append(wall)
        if self.seconds is None:
            return
        if self.steps is None:
            lo, hi = CALIBRATION_STEPS
            if len(self.step_times) >= hi:
                step = sorted(self.step_times[lo:hi])[(hi - lo) // 2]
                self.plan(global_step, step * 1.03, self.eval_steps * step / EVAL_SPEEDUP)
        elif global_step < self.steps and self.world.any(self.world.main and self.elapsed() + shorter > self.deadline):
            if self.world.main:
                log.warning("time budget: the steps ran slower than planned; ending after step %d of %d to stay "
                            "within %.0f s", global_step, self.steps, self.seconds)
            self.steps = global_step  # the run ends here, before its rate has decayed to min_lr

    def end_epoch(self, global_step: int, steps: int, train_seconds: float, eval_seconds: float) -> None:
        """Plan again from the epoch that just ended: its seconds per step, and everything else an
        epoch costs (evaluation, and the last epoch's checkpoint and files)."""
        if self.seconds is not None and not self.ends_at(global_step):
            if self.epoch_ended is None:  # this attempt's first epoch: less its start-up and compilation
                train_seconds, other = self.steady(train_seconds), eval_seconds
            else:
                other = self.elapsed() - self.epoch_ended - train_seconds
            self.plan(global_step, train_seconds / max(steps, 1), other)
        self.epoch_ended = self.elapsed()

    def plot(self, draw: Callable[[], None], final: bool) -> None:
        """Draw the curves after an epoch, at most every PLOT_EVERY_S seconds but always at the end,
        whose plot the plans keep time for."""
        start = self.clock()
        if final or start - self.last_plot > PLOT_EVERY_S:
            draw()
            self.last_plot = self.clock()
            self.plot_seconds = self.last_plot - start

    # -- planning ------------------------------------------------------------------------------------
    def plan(self, global_step: int, step_seconds: float, eval_seconds: float) -> None:
        """The run's steps, and the deadline of its backstop; rank 0's plan for every process."""
        final = self.test_share * eval_seconds + self.plot_seconds  # the test split, the last plot
        steps = plan_steps(self.seconds, self.steps_per_epoch, self.elapsed(), global_step, step_seconds,
                           eval_seconds, final)
        self.steps = self.world.broadcast(steps)
        self.deadline = self.seconds * (1 - END) - eval_seconds - final

    def steady(self, seconds: float) -> float:
        """The first epoch's training seconds without what its first steps spent on start-up and
        compilation (they are replaced by the median step), since later epochs will not pay it."""
        warm, times = CALIBRATION_STEPS[0], self.step_times
        if len(times) < 2 * warm:
            return seconds
        median = sorted(times[warm:])[len(times[warm:]) // 2]
        return seconds - max(0.0, sum(times[:warm]) - warm * median)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "elapsed": self.elapsed(), "deadline": self.deadline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run keeps its plan. (Checkpoints of earlier versions kept these in their
        progress, some with epochs instead of steps.)"""
        self.earlier = state.get("elapsed", 0.0)
        self.deadline = state.get("deadline", math.inf)
        if state.get("steps") is not None:
            self.steps = state["steps"]
        elif state.get("epochs") is not None:
            self.steps = state["epochs"] * self.steps_per_epoch


def plan_steps(budget: float, per_epoch: int, elapsed: float, steps_done: int, step_seconds: float,
               eval_seconds: float, final_seconds: float = 0.0) -> int:
    """Optimizer steps for the whole run: the `steps_done` in `elapsed` seconds, then as many as
    fit in what is left, each epoch (the last one too, however short) ending with an evaluation
    of `eval_seconds`, and the run with `final_seconds` (the test split, the last plot)."""
    step_seconds = max(step_seconds, 1e-6)
    left = max(0.0, budget * (1 - END) - elapsed - final_seconds) * SAFETY
    steps = steps_done
    to_end = -steps_done % per_epoch  # the rest of the epoch in progress
    if to_end and to_end * step_seconds + eval_seconds <= left:
        steps, left = steps + to_end, left - to_end * step_seconds - eval_seconds
        to_end = 0
    if not to_end:  # at an epoch's end: whole epochs, then what is left of one
        epoch_seconds = per_epoch * step_seconds + eval_seconds
        whole = int(left // epoch_seconds)
        steps, left = steps + whole * per_epoch, left - whole * epoch_seconds
    steps += min(max(0, int((left - eval_seconds) / step_seconds)), to_end or per_epoch - 1)  # cut short
    steps = max(1, steps)
    log.info("time budget %.0f s: %.3f s per step, %.1f s per evaluation -> %d steps (%.2f epochs)",
             budget, step_seconds, eval_seconds, steps, steps / per_epoch)
    return steps
