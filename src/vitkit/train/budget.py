"""`--time-budget`: how many whole epochs fit in a wall-clock budget.

The plan is made twice, by the same rule: from the first timed steps (so the cosine schedule
knows its length early) and again from the first whole epoch with its evaluation (less what its
first steps spent compiling, which later epochs do not pay). It is saved in
every checkpoint from then on, so a resumed run keeps it; a run stopped before it had a plan
makes one after resuming.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger("vitkit")
SAFETY = 0.97  # leave a little of the budget for the last checkpoint, plots and the test set
CALIBRATION_STEPS = (5, 25)  # steps 5..24 are timed: the first ones include start-up and compilation


@dataclass(frozen=True)
class BudgetPlanner:
    budget: float  # seconds for the whole run
    steps_per_epoch: int

    def epochs(self, elapsed: float, steps_done: float, epoch_seconds: float) -> int:
        """Whole epochs for the run: the `steps_done` already taken in `elapsed` seconds, plus as
        many epochs of `epoch_seconds` (training and evaluation) as fit in what is left."""
        done = steps_done / self.steps_per_epoch
        remaining = max(0.0, self.budget - elapsed) * SAFETY
        epochs = max(1, math.ceil(done - 1e-9), int(done + remaining / epoch_seconds))
        log.info("time budget %.0f s: %.1f s per epoch -> %d epochs", self.budget, epoch_seconds, epochs)
        return epochs

    @staticmethod
    def steady_seconds(epoch_seconds: float, step_times: list[float]) -> float:
        """A whole epoch's seconds without what its first steps spent on start-up and compilation
        (they are replaced by the median step), since later epochs will not pay it again."""
        warm = CALIBRATION_STEPS[0]
        if len(step_times) < 2 * warm:
            return epoch_seconds
        steady = sorted(step_times[warm:])[len(step_times[warm:]) // 2]
        return epoch_seconds - max(0.0, sum(step_times[:warm]) - warm * steady)

    @staticmethod
    def step_seconds(step_times: list[float]) -> float | None:
        """The median of the calibration steps, once they have been timed."""
        lo, hi = CALIBRATION_STEPS
        if len(step_times) < hi:
            return None
        sample = sorted(step_times[lo:hi])
        return sample[len(sample) // 2]
