"""Adaptive sparsity strength: raise s while the share of collapsed gammas lags its schedule.

A fixed ``s`` that collapses 23 % of tiny's gammas at 160 px in 2600 steps collapsed 0.2 % of
them at 256 px in 625 steps on a user's data: how far s gets depends on the data, the input
size, the LR and the number of steps, none of which the user can weigh in advance. What the
prune needs is known: a share of prunable |gamma| below 1e-2 at least as large as the ratio it
will remove. So ``--sparsity-target SHARE`` makes that the goal and lets s follow it.

The rule, applied after every epoch e of E (shares measured on the weights that are saved):

    expected(e) = SHARE * min(1, e / (REACH * E))     # linear, reached at REACH = 3/4 of the run
    share < expected(e)          -> s *= FACTOR        # behind: push harder, at most MAX_GAIN x s
    share >= SHARE and raised    -> s /= FACTOR        # past the goal: give live channels back room
    otherwise                    -> s unchanged        # on schedule

Reaching the goal at 3/4 of the run leaves the last quarter for the surviving channels to
recover under a steady penalty. The gain is a multiplier on the user's ``--s`` (and on its
schedule), never below 1, so a run that is on schedule trains exactly as before.
"""
from dataclasses import dataclass

REACH = 0.75       # the share should be at the target by this fraction of the epochs
FACTOR = 2.0       # per-epoch change of the gain
MAX_GAIN = 32.0    # s never exceeds 32x the given --s: past that the L1 term swamps the loss


@dataclass
class SparsityTarget:
    """The schedule the collapsed share is held to, and the gain on s it sets."""
    target: float
    epochs: int
    gain: float = 1.0

    def expected(self, epochs_done):
        return self.target * min(1.0, epochs_done / max(REACH * self.epochs, 1e-9))

    def update(self, share, epochs_done):
        """New gain after an epoch that ended with ``share`` of the prunable gammas below 1e-2."""
        if share < self.expected(epochs_done):
            self.gain = min(self.gain * FACTOR, MAX_GAIN)
        elif share >= self.target and self.gain > 1.0:
            self.gain = max(self.gain / FACTOR, 1.0)
        return self.gain

    def shortfall(self, share, s_given, epochs, constant_lr=True):
        """A plain warning when the run ended short of the target, else None."""
        if share >= self.target:
            return None
        capped = " (the cap)" if self.gain >= MAX_GAIN else ""
        lr_hint = "" if constant_lr else "keep the LR up while the gammas collapse (--lrf 1.0), "
        return (f"warning: sparsity training ended with {share:.1%} of the prunable |gamma| below 1e-2, short of "
                f"--sparsity-target {self.target:.0%}; s ended at {self.gain:g} x --s {s_given:g}{capped}. Pruning "
                f"more than {share:.0%} of the channels will cut live ones: train longer (--epochs {2 * epochs}, or "
                f"--resume --epochs N to extend this run), start from a larger --s ({s_given * MAX_GAIN:g}), "
                f"{lr_hint}or prune at a ratio the share supports (--percent auto finds it)")

    def state_dict(self):
        return {"target": self.target, "epochs": self.epochs, "gain": self.gain}

    def load_state_dict(self, state):
        self.target, self.epochs, self.gain = float(state["target"]), int(state["epochs"]), float(state["gain"])


def untrained_warning(share, s_given):
    """Without a target: say plainly when s did not take hold (under 10% collapsed)."""
    if share >= 0.1:
        return None
    return (f"warning: only {share:.1%} of the prunable |gamma| fell below 1e-2: the sparsity did not take hold, "
            f"and a prune will cut live channels. Pass --sparsity-target SHARE (the ratio you mean to prune) to let "
            f"s rise on its own, or a larger --s than {s_given:g}, or more epochs")
