"""Sparsity training (network slimming): an L1 penalty on the BN scale factors (gamma).

The penalty ``s * sum|gamma|`` is not added to the loss; its subgradient ``s * sign(gamma)``
is added straight to ``gamma.grad`` after ``backward()`` and before ``optimizer.step()``:

    loss.backward()                      # or scaler.scale(loss).backward()
    # AMP: scaler.unscale_(optimizer) first, so s is not multiplied by the loss scale
    sparsity.apply()
    optimizer.step()

Which BNs: those the named prune policy may cut (``policy_layers``: normal leaves the convs
meeting at shortcuts alone, shortcut and tiny take every prunable conv), so the penalty lands
exactly on the channels that the matching prune script can remove.

DDP: DistributedDataParallel all-reduces the gradients inside ``backward()``; gamma itself is
identical on every rank (same initial broadcast, same averaged updates), so adding
``s * sign(gamma)`` afterwards gives every rank the same gradient. No extra communication.

Schedules for ``s`` (``epoch`` may be fractional):
    constant: s
    linear:   s * (1 - 0.9 * epoch / epochs)  -- seed doc 000: ends at 0.1 s
    step:     s before 50% of the epochs, 0.5 s from 50% to 80%, 0.1 s after 80%:
              strong pressure first to drive unimportant gammas to zero, then a weak one so
              the remaining channels can recover accuracy before pruning.
"""
import os

import numpy as np
import torch

from yoloslim.train.loss import unwrap
from yoloslim.plots import pyplot, save_png
from yoloslim.prune.engine import POLICIES
from yoloslim.prune.graph import sparsity_layers

SCHEDULES = ("constant", "linear", "step")
SMALL_GAMMA = 1e-2          # |gamma| below this counts as "collapsed" in the stats


def policy_layers(module_defs, policy):
    """Conv indices whose gammas a sparsity run for prune ``policy`` penalises (a name, or the
    seeds' 0 normal / 1 shortcut / 2 tiny)."""
    from yoloslim.train.config import sparsity_policy
    return sparsity_layers(module_defs, POLICIES[sparsity_policy(policy)].shortcut_groups)


def bn_modules(model, layers):
    net = unwrap(model)
    return [net.bn(i) for i in layers]


class BNSparsity:
    """Adds ``s_at(epoch) * sign(gamma)`` to the gradients of the selected BN gammas."""

    def __init__(self, model, policy="shortcut", s=0.001, schedule="constant", epochs=1):
        from yoloslim.train.config import sparsity_policy
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown sparsity schedule {schedule!r}; use one of {SCHEDULES}")
        self.policy, self.s, self.schedule, self.epochs = sparsity_policy(policy), float(s), schedule, max(int(epochs), 1)
        self.layers = policy_layers(unwrap(model).module_defs, self.policy)
        self.bns = bn_modules(model, self.layers)
        self.epoch = 0.0
        self.gain = 1.0             # set by --sparsity-target (yoloslim/train/sparsity_target.py); 1 = s as given

    def s_at(self, epoch=None):
        """Penalty strength at ``epoch`` (defaults to the epoch set by ``set_epoch``)."""
        e = self.epoch if epoch is None else float(epoch)
        s = self.s * self.gain
        if self.schedule == "linear":
            return s * (1.0 - 0.9 * e / self.epochs)
        if self.schedule == "step":
            frac = e / self.epochs
            return s if frac < 0.5 else s * 0.5 if frac < 0.8 else s * 0.1
        return s

    def set_epoch(self, epoch):
        self.epoch = float(epoch)

    @torch.no_grad()
    def apply(self, epoch=None):
        """Add the L1 subgradient to every selected gamma.grad; returns the ``s`` used."""
        s = self.s_at(epoch)
        for bn in self.bns:
            g = bn.weight
            if g.grad is None:      # a BN that took no part in this step still gets the pull to 0
                g.grad = torch.zeros_like(g)
            g.grad.add_(torch.sign(g.detach()).to(g.grad.dtype), alpha=s)
        return s

    def state_dict(self):
        return {"policy": self.policy, "s": self.s, "schedule": self.schedule, "epochs": self.epochs,
                "epoch": self.epoch, "layers": list(self.layers), "gain": self.gain}

    def load_state_dict(self, state):
        if list(state["layers"]) != list(self.layers):
            raise ValueError("sparsity state was saved for other BN layers; resume with the same --cfg and --prune")
        self.s, self.schedule = float(state["s"]), state["schedule"]
        self.epochs, self.epoch = int(state["epochs"]), float(state["epoch"])
        self.gain = float(state.get("gain", 1.0))


# ----------------------------------------------------------------------------- statistics
def gamma_values(model, layers):
    """|gamma| of the given conv layers' BNs, concatenated, as a float numpy array."""
    bns = bn_modules(model, layers)
    if not bns:
        return np.zeros(0, dtype=np.float32)
    return torch.cat([bn.weight.detach().abs().float().cpu() for bn in bns]).numpy()


def gamma_stats(model, layers):
    """Summary of |gamma| over the selected BNs: count, fraction below 1e-2, mean and quantiles."""
    g = gamma_values(model, layers)
    if g.size == 0:
        return {"n": 0}
    q = np.quantile(g, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(g.size), "frac_below_1e-2": float((g < SMALL_GAMMA).mean()), "mean": float(g.mean()),
            "min": float(g.min()), "max": float(g.max()),
            "q10": float(q[0]), "q25": float(q[1]), "q50": float(q[2]), "q75": float(q[3]), "q90": float(q[4])}


def log_histograms(samples, bins=60, floor=1e-4):
    """Histograms of several |gamma| samples on one log axis (values below ``floor`` in the first
    bin, where a collapse shows as a pile), each with its share below 1e-2: what a before/after
    figure needs, a few hundred numbers instead of every gamma."""
    samples = [np.asarray(g, dtype=float) for g in samples]
    top = max([1e-3] + [float(g.max()) for g in samples if g.size])
    edges = np.logspace(np.log10(floor), np.log10(top * 1.05), bins + 1)
    return {"edges": edges.tolist(),
            "counts": [np.histogram(np.clip(g, floor, None), bins=edges)[0].tolist() for g in samples],
            "below_1e-2": [float((g < SMALL_GAMMA).mean()) if g.size else 0.0 for g in samples]}


def record_gamma_history(history, epoch, model, layers, bins=60):
    """Append this epoch's |gamma| histogram to ``history`` (a list kept in the checkpoint).

    The bin edges are fixed by the first record (0 .. 1.2 x the largest gamma then), so every
    epoch is drawn on the same axis; larger later values go into the last bin.
    """
    g = gamma_values(model, layers)
    if history:
        edges = np.asarray(history[0]["edges"])
    else:
        edges = np.linspace(0.0, max(float(g.max()) * 1.2 if g.size else 1.0, 1e-3), bins + 1)
    counts, _ = np.histogram(np.clip(g, edges[0], edges[-1]), bins=edges)
    history.append({"epoch": int(epoch), "counts": counts.tolist(), "edges": edges.tolist()})
    return history


# ----------------------------------------------------------------------------- plots
def plot_gamma_histogram(model, layers, path, title=None):
    """PNG histogram of |gamma| over the sparsified BNs, with the collapsed fraction in the title."""
    plt = pyplot()
    g = gamma_values(model, layers)
    stats = gamma_stats(model, layers)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.hist(g, bins=80, color="#3b6ea8")
    ax.set_xlabel("|gamma|")
    ax.set_ylabel("channels")
    extra = f"{stats.get('frac_below_1e-2', 0):.1%} < 1e-2, median {stats.get('q50', 0):.3f}" if g.size else "no layers"
    ax.set_title(f"{title} ({extra})" if title else extra, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return path


def plot_gamma_history(history, path, title="BN |gamma| per epoch"):
    """Stacked ("ridgeline") histograms, one row per recorded epoch, oldest at the back."""
    plt = pyplot()
    if not history:
        raise ValueError("empty gamma history; nothing to plot")
    edges = np.asarray(history[0]["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    peak = max(max(h["counts"]) for h in history) or 1
    step = 0.35                                          # vertical offset between epochs
    fig, ax = plt.subplots(figsize=(6.4, 1.6 + 0.28 * len(history)))
    cmap = plt.get_cmap("viridis")
    for k, h in enumerate(reversed(history)):           # later epochs drawn first, at the bottom
        row = len(history) - 1 - k
        y0 = (len(history) - 1 - row) * step
        y = y0 + np.asarray(h["counts"]) / peak
        color = cmap(row / max(len(history) - 1, 1))
        ax.fill_between(centres, y0, y, color=color, alpha=0.85, linewidth=0, zorder=row)
        ax.plot(centres, y, color="k", linewidth=0.4, zorder=row)
    ticks = list(range(0, len(history), max(1, len(history) // 8)))
    ax.set_yticks([(len(history) - 1 - r) * step for r in ticks])
    ax.set_yticklabels([f"ep {history[r]['epoch']}" for r in ticks])
    ax.set_xlabel("|gamma|")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return path


def tensorboard_writer(log_dir):
    """A SummaryWriter when TensorBoard is installed, else None (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or tensorboard's own import-time failures
        return None
    os.makedirs(log_dir, exist_ok=True)
    return SummaryWriter(log_dir)


def log_gamma_tensorboard(writer, model, layers, epoch):
    if writer is not None:
        writer.add_histogram("bn_gamma", gamma_values(model, layers), epoch)
