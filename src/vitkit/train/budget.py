"""`--time-budget`: how many optimizer steps fit in a wall-clock budget.

The plan counts steps, not epochs, so that a run spends its whole budget: the last epoch may be
cut short (it still ends with an evaluation). It is made from the first timed steps (so the
cosine schedule knows its length early), then again after every epoch from that epoch's own
speed and evaluation time (the first epoch less what its first steps spent compiling, which
later epochs do not pay), so a machine that slows down mid-run does not overrun the budget;
steps that slow down within an epoch meet the trainer's backstop at `deadline`. The plan is
saved in every checkpoint, so a resumed run keeps it until its next epoch ends; a run stopped
before it had a plan makes one after resuming.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("vitkit")
SAFETY = 0.97  # of what is left at each plan: the plan's estimates are not exact
END = 0.01  # of the budget, for the run's last outputs and the interpreter's start before the clock
CALIBRATION_STEPS = (5, 25)  # steps 5..24 are timed: the first ones include start-up and compilation


@dataclass(frozen=True)
class BudgetPlanner:
    budget: float  # seconds for the whole run
    steps_per_epoch: int

    def steps(self, elapsed: float, steps_done: int, step_seconds: float, eval_seconds: float,
              final_seconds: float = 0.0) -> int:
        """Optimizer steps for the whole run: the `steps_done` in `elapsed` seconds, then as many
        as fit in what is left, each epoch (the last one too, however short) ending with an
        evaluation of `eval_seconds`, and the run with `final_seconds` (the test split, the last
        plot)."""
        per_epoch, step_seconds = self.steps_per_epoch, max(step_seconds, 1e-6)
        left = max(0.0, self.budget * (1 - END) - elapsed - final_seconds) * SAFETY
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
                 self.budget, step_seconds, eval_seconds, steps, steps / per_epoch)
        return steps

    def deadline(self, eval_seconds: float, final_seconds: float) -> float:
        """The elapsed seconds by which training must stop so that the last evaluation and the run's
        final outputs still fit: the plans end short of it (SAFETY), the trainer's backstop at it."""
        return self.budget * (1 - END) - eval_seconds - final_seconds

    @staticmethod
    def steady_seconds(seconds: float, step_times: list[float]) -> float:
        """The first epoch's training seconds without what its first steps spent on start-up and
        compilation (they are replaced by the median step), since later epochs will not pay it."""
        warm = CALIBRATION_STEPS[0]
        if len(step_times) < 2 * warm:
            return seconds
        steady = sorted(step_times[warm:])[len(step_times[warm:]) // 2]
        return seconds - max(0.0, sum(step_times[:warm]) - warm * steady)

    @staticmethod
    def step_seconds(step_times: list[float]) -> float | None:
        """The median of the calibration steps, once they have been timed."""
        lo, hi = CALIBRATION_STEPS
        if len(step_times) < hi:
            return None
        sample = sorted(step_times[lo:hi])
        return sample[len(sample) // 2]
