"""One training run from a ``TrainConfig``: transfer, BN sparsity (network slimming),
distillation, EMA, resumable checkpoints, DDP. ``train(config)`` is the entry point.

Outputs in ``config.out``: last.pt / best.pt (checkpoints with the cfg inside), last.weights /
best.weights (Darknet), results.csv (one row per epoch), and with sparsity gamma_epochNNN.png
plus gamma_history.png.

Reproducibility: the shuffle order of an epoch and the random state of every batch are
functions of (seed, epoch, batch), so a run resumed from last.pt, even one interrupted in
the middle of an epoch, continues exactly as the uninterrupted run would (bit for bit on CPU
with workers=0; with worker processes, augmentation randomness lives in the workers).
"""
import csv
import math
import os
import random
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from yoloslim.darknet.cfg import load_classes, parse_cfg_text, parse_data_cfg
from yoloslim.darknet.load import load_any, model_from_checkpoint
from yoloslim.darknet.model import Darknet
from yoloslim.darknet.weights import load_checkpoint, save_checkpoint
from yoloslim.data.datasets import LoadImagesAndLabels
from yoloslim.data.files import check_classes
from yoloslim.deploy.measure import flush_denormals
from yoloslim.errors import DataError, SlimError
from yoloslim.eval.evaluate import build_loader, evaluate
from yoloslim.io import atomic_write, claim_folder
from yoloslim.owned import check_claimable, has_any
from yoloslim.train.config import parse_hyp
from yoloslim.train.distill import check_compatible, distillation_loss, head_logits, teacher_outputs
from yoloslim.train.ema import ModelEMA
from yoloslim.train.loss import compute_loss, init_head_biases
from yoloslim.train.runtime import (Dist, GracefulStop, ResumableSampler, batch_seed, rng_state, seed_everything,
                                    seed_worker, select_device, set_rng_state)
from yoloslim.train.sparsity import (BNSparsity, gamma_stats, log_gamma_tensorboard, plot_gamma_histogram,
                                     plot_gamma_history, record_gamma_history, tensorboard_writer)
from yoloslim.train.sparsity_target import SparsityTarget, untrained_warning
from yoloslim.train.transfer import TransferReport, keep_frozen_bn_eval, load_partial

RESULT_FIELDS = ["epoch", "lr", "s", "box", "obj", "cls", "kd", "loss", "P", "R", "F1", "mAP50", "mAP50_95",
                 "gamma_below_1e-2", "sparsity_goal", "gamma_median", "epoch_s", "eval_s"]


# ----------------------------------------------------------------------------- run folder
def prepare_run_folder(opt, ddp):
    """A resumed run needs its last.pt; a new run's folder is claimed at the end of setup."""
    if opt.resume and not os.path.isfile(os.path.join(opt.out, "last.pt")):
        raise SlimError(f"{opt.out}: no last.pt to resume from; start the run without --resume")
    # never into, nor beside as out-2, a folder or file of the user's (a data set, say)
    check_claimable(opt.out, "--out", legacy=has_any("last.pt", "results.csv", "stage.json", "tb"))
    ddp.barrier()  # every rank checks before rank 0 creates the folder (at the end of setup)


def claim_run_folder(opt, ddp):
    """A new run claims its folder as the prune scripts do (os.mkdir: out, else out-2, -3, ...),
    so two runs given one out, even started at once, never write into one folder. resume and
    exist_ok write into out as given. Under torchrun rank 0 claims and every rank takes its name."""
    if opt.resume or opt.exist_ok:
        if ddp.master:
            os.makedirs(opt.out, exist_ok=True)
        return
    name = [claim_folder(opt.out) if ddp.master else None]
    if ddp.enabled:
        dist.broadcast_object_list(name, src=0)
    if name[0] != os.fspath(opt.out).rstrip(os.sep) and ddp.master:
        print(f"note: {opt.out} is taken; this run writes into {name[0]}", file=sys.stderr)
    opt.out = name[0]


# ----------------------------------------------------------------------------- model and data
def build_model(opt, device, ckpt=None):
    """(student, TransferReport or None): from a resumed checkpoint's own cfg, or --cfg/--weights.

    Every head that does not come from trained weights starts at the objectness/class prior.
    """
    if ckpt is not None:   # its weights are loaded by Trainer._restore; --weights is not needed again
        return Darknet(parse_cfg_text(ckpt["cfg"], os.path.join(opt.out, "last.pt")), opt.img_size).to(device), None
    report = None
    if opt.cfg:
        model = Darknet(opt.cfg, opt.img_size)
        if opt.weights:
            report = load_partial(model, opt.weights, opt.cutoff, opt.weights_cfg, opt.img_size,
                                  prior=not opt.no_head_prior)
        elif not opt.no_head_prior:
            init_head_biases(model, opt.img_size or int(model.img_size[1]))
    else:
        model = model_from_checkpoint(opt.weights, opt.img_size)
    return model.to(device), report


def set_bn_momentum(model, momentum):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum


def build_teacher(opt, student, device):
    if not opt.t_weights:
        return None
    teacher = load_any(opt.t_cfg, opt.t_weights, opt.img_size)
    check_compatible(student, teacher)
    teacher.to(device).eval()
    for prm in teacher.parameters():
        prm.requires_grad_(False)
    return teacher


def build_train_loader(opt, data, ddp, img_size, nc, aug_hyp=None):
    dataset = LoadImagesAndLabels(data["train"], img_size, opt.batch_size, augment=not opt.no_augment,
                                  hyp=aug_hyp, nc=nc)
    if len(dataset) == 0:
        raise DataError(f"{data['train']}: no training images")
    per_rank = max(opt.batch_size // ddp.world, 1)
    sampler = ResumableSampler(dataset, ddp, opt.seed, per_rank)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=opt.workers,
                        collate_fn=LoadImagesAndLabels.collate_fn, pin_memory=torch.cuda.is_available(),
                        worker_init_fn=seed_worker, drop_last=False)
    return loader, sampler


def batches_per_epoch(sampler, per_rank):
    return math.ceil(len(sampler.base) / per_rank)


# ----------------------------------------------------------------------------- optimizer and LR
def build_optimizer(model, opt):
    """Weight decay on conv weights only: decaying BN gammas would fight the L1 sparsity term."""
    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (decay if name.endswith("Conv2d.weight") else no_decay).append(prm)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": opt.weight_decay}]
    if opt.optimizer == "adam":
        return torch.optim.Adam(groups, lr=opt.lr0, betas=(opt.momentum, 0.999))
    return torch.optim.SGD(groups, lr=opt.lr0, momentum=opt.momentum, nesterov=True)


def lr_at(opt, epoch_pos, iteration, warmup_iters):
    """Cosine from lr0 to lr0*lrf over the run, times a linear warm-up over the first iterations."""
    cosine = opt.lrf + (1 - opt.lrf) * (1 + math.cos(math.pi * epoch_pos / opt.epochs)) / 2
    warm = min(1.0, (iteration + 1) / warmup_iters) if warmup_iters else 1.0
    return opt.lr0 * cosine * warm


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------- outputs
def save_outputs(net, path_stem, ckpt_extra, reader):
    save_checkpoint(net.checkpoint(**ckpt_extra), path_stem + ".pt")
    net.save_darknet_weights(path_stem + ".weights", reader=reader)


def write_results_csv(path, rows):
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def progress(iterable, total, enabled, desc):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)


# ----------------------------------------------------------------------------- training
class Trainer:
    """One training run; ``train(opt)`` below is the entry point."""

    def __init__(self, opt, on_batch_end=None):
        self.opt, self.on_batch_end = opt, on_batch_end
        self.ddp, self.tb = Dist(), None
        self.threads_before = torch.get_num_threads()   # restored by close(): in-process callers keep theirs
        self.flush_before = flush_denormals(True)       # sparsity training makes denormals: slow on CPU
        try:
            self._setup(opt)
        except BaseException:
            self.close()       # no process group or thread setting left behind by a failed start
            raise

    def _setup(self, opt):
        self.device = select_device(opt.device, self.ddp)
        self.ddp.init(self.device)
        if opt.threads:
            torch.set_num_threads(opt.threads)
        elif self.ddp.enabled and self.device.type == "cpu":
            # n processes sharing the cores: one each avoids oversubscription
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.ddp.world))
        prepare_run_folder(opt, self.ddp)
        self.ckpt = load_checkpoint(os.path.join(opt.out, "last.pt")) if opt.resume else None
        if self.ckpt is not None:   # the run continues with the options it was started with
            self.opt = opt = opt.with_saved(self.ckpt["opt"])
        seed_everything(opt.seed)
        self.hyp, self.aug_hyp = parse_hyp(opt.hyp)
        self.data = parse_data_cfg(opt.data)
        for key in ("train", "valid"):
            if not self.data.get(key):
                raise DataError(f"{opt.data}: no '{key}=' line; add the image list path")
        self.names = load_classes(self.data["names"]) if self.data.get("names") else None
        self.net, self.transfer = build_model(opt, self.device, self.ckpt)
        set_bn_momentum(self.net, opt.bn_momentum)
        check_classes(self.net.nc, self.data, opt.data)
        self.img_size = opt.img_size or int(self.net.img_size[1])
        self.freeze_epochs = opt.epochs if opt.freeze_epochs is None else opt.freeze_epochs
        self.report_transfer()
        self.teacher = build_teacher(opt, self.net, self.device)
        self.loader, self.sampler = build_train_loader(opt, self.data, self.ddp, self.img_size, self.net.nc,
                                                       self.aug_hyp)
        self.per_rank = self.loader.batch_size
        self.nb = batches_per_epoch(self.sampler, self.per_rank)
        self.optimizer = build_optimizer(self.net, opt)
        self.amp = self.device.type == "cuda" and not opt.no_amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.sparsity = BNSparsity(self.net, opt.prune, opt.s, opt.sr_schedule, opt.epochs) if opt.sr else None
        self.target = SparsityTarget(opt.sparsity_target, opt.epochs) if opt.sr and opt.sparsity_target else None
        self.share = None     # share of prunable |gamma| below 1e-2 after the latest epoch
        self.model = self.net
        if self.ddp.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.ema = ModelEMA(self.net, opt.ema) if opt.ema > 0 else None
        self.start_epoch, self.start_batch = 0, 0
        self.partial = (torch.zeros(5), 0)   # loss sums of the epoch a resumed run re-enters
        self.best_fitness, self.results, self.gamma_history = -1.0, [], []
        if self.ckpt is not None:
            self._restore(self.ckpt)
        claim_run_folder(opt, self.ddp)   # only now: a run refused during setup leaves no folder behind
        self.tb = tensorboard_writer(os.path.join(opt.out, "tb")) if self.ddp.master else None
        self.val_loader = None

    def report_transfer(self):
        opt = self.opt
        if opt.freeze and self.ddp.enabled:
            raise SlimError("--freeze is not supported under DDP (torchrun); train on one process or drop --freeze")
        if self.transfer is None and not opt.freeze:
            return
        if self.transfer is None:   # freezing a model loaded whole
            self.transfer = TransferReport(opt.weights or opt.cfg, self.net.nc, self.net.nc)
        self.transfer.frozen = [i for i, m in enumerate(self.net.module_list[:opt.freeze])
                                if any(True for _ in m.parameters())]
        self.transfer.freeze_epochs = self.freeze_epochs
        if self.ddp.master:
            print("\n".join(self.transfer.lines()), flush=True)

    def apply_freeze(self, epoch):
        """Layers 0..freeze-1 take no step and keep their BN statistics during the first epochs."""
        n = self.opt.freeze if epoch < self.freeze_epochs else 0
        for i, module in enumerate(self.net.module_list):
            for prm in module.parameters():
                prm.requires_grad_(i >= n)
        if n:
            keep_frozen_bn_eval(self.net, n)

    # -- checkpoint state
    def _state(self, epoch, batch, partial=None):
        """Everything a resumed run needs; ``partial`` = (loss sums, batches) of an unfinished epoch."""
        sums, count = partial if partial is not None else (torch.zeros(5), 0)
        state = {"optimizer": self.optimizer.state_dict(), "epoch": epoch, "batch": batch,
                 "partial_losses": sums.clone(), "partial_batches": count,
                 "best_fitness": self.best_fitness, "results": self.results,
                 "gamma_history": self.gamma_history, "rng": rng_state(), "opt": asdict(self.opt),
                 "scaler": self.scaler.state_dict() if self.amp else {}}
        if self.ema is not None:   # "model" holds the averaged weights; training resumes from these
            state.update(train_model=self.net.state_dict(), ema_updates=self.ema.updates)
        if self.sparsity is not None:
            state["sparsity"] = self.sparsity.state_dict()
        if self.target is not None:
            state["sparsity_target"] = self.target.state_dict()
        return state

    def _restore(self, ckpt):
        self.net.load_checkpoint_state(ckpt, os.path.join(self.opt.out, "last.pt"))
        if self.ema is not None and "train_model" in ckpt:
            self.ema.model.load_state_dict(self.net.state_dict())
            self.ema.updates = int(ckpt["ema_updates"])
            self.net.load_state_dict(ckpt["train_model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.sparsity is not None and "sparsity" in ckpt:
            self.sparsity.load_state_dict(ckpt["sparsity"])
        if self.target is not None and "sparsity_target" in ckpt:
            self.target.load_state_dict(ckpt["sparsity_target"])
            self.target.epochs = self.opt.epochs   # an extended run spreads the schedule over its new length
        self.start_epoch, self.start_batch = int(ckpt["epoch"]), int(ckpt["batch"])
        if self.start_epoch >= self.opt.epochs:
            raise SlimError(f"{self.opt.out}: this run already trained {self.start_epoch} epochs; pass --epochs N "
                            f"with N > {self.start_epoch} to extend it")
        self.partial = (ckpt["partial_losses"].clone(), int(ckpt["partial_batches"]))
        self.best_fitness = float(ckpt["best_fitness"])
        self.results, self.gamma_history = list(ckpt["results"]), list(ckpt.get("gamma_history", []))
        set_rng_state(ckpt["rng"])
        if self.ddp.master:
            print(f"resuming {self.opt.out} at epoch {self.start_epoch} batch {self.start_batch}")

    def deployed(self):
        """The weights that are evaluated and saved: the EMA when on, else the trained ones."""
        return self.ema.model if self.ema is not None else self.net

    def save_last(self, epoch, batch, partial):
        if self.ddp.master:
            save_outputs(self.deployed(), os.path.join(self.opt.out, "last"), self._state(epoch, batch, partial),
                         self.opt.reader)

    # -- one optimizer step
    def step(self, imgs, targets, epoch, i):
        opt = self.opt
        iteration = epoch * self.nb + i
        set_lr(self.optimizer, lr_at(opt, epoch + i / self.nb, iteration, round(opt.warmup_epochs * self.nb)))
        imgs = imgs.to(self.device, non_blocking=True).float()
        if opt.multi_scale:   # drawn from the per-batch seed, so a resumed run picks the same sizes
            size = random.randrange(round(self.img_size * 2 / 3 / 32), round(self.img_size * 4 / 3 / 32) + 1) * 32
            if size != imgs.shape[-1]:
                imgs = nn.functional.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
        with torch.autocast(self.device.type, enabled=self.amp):
            p = self.model(imgs)
            loss, items = compute_loss(p, targets.to(self.device), self.net, self.hyp, imgs.shape[-2:])
            kd = torch.zeros((), device=self.device)
            if self.teacher is not None:
                kd = distillation_loss(head_logits(self.net, p), teacher_outputs(self.teacher, imgs), T=opt.kd_T) * imgs.shape[0]
                loss = loss + opt.kd_weight * kd
        if not torch.isfinite(loss):
            raise SlimError(f"loss became {loss.item()} at epoch {epoch} batch {i}; lower --lr0 "
                            f"(or --s for sparsity training)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()          # DDP all-reduces gradients here
        self.scaler.unscale_(self.optimizer)        # the L1 term must not be multiplied by the loss scale
        nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)
        if self.sparsity is not None:
            self.sparsity.apply(epoch + i / self.nb)  # after clipping: the penalty keeps its size
            for prm in self.net.parameters():         # the penalty must not move a frozen gamma
                if not prm.requires_grad:
                    prm.grad = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.net)
        return torch.cat((items, kd.detach().view(1) / imgs.shape[0]))

    # -- epochs
    def train_epoch(self, epoch, stop):
        opt, resumed = self.opt, epoch == self.start_epoch
        start = self.start_batch if resumed else 0
        self.model.train()
        self.apply_freeze(epoch)
        self.sampler.set_epoch(epoch, start)
        sums, count = (self.partial[0].clone(), self.partial[1]) if resumed else (torch.zeros(5), 0)
        it = iter(self.loader)
        bar = progress(range(start, self.nb), self.nb - start, self.ddp.master and not opt.quiet,
                       f"epoch {epoch + 1}/{opt.epochs}")
        for i in bar:
            seed_everything(batch_seed(opt.seed, epoch, i))
            imgs, targets, _, _ = next(it)
            sums += self.step(imgs, targets, epoch, i).cpu()
            count += 1
            if hasattr(bar, "set_postfix"):
                m = sums / count
                bar.set_postfix(box=f"{m[0]:.3f}", obj=f"{m[1]:.3f}", cls=f"{m[2]:.3f}", loss=f"{m[3]:.3f}")
            if self.on_batch_end is not None:
                self.on_batch_end(epoch, i)
            if self.ddp.any(stop.requested) and i + 1 < self.nb:
                self.save_last(epoch, i + 1, (sums, count))
                raise KeyboardInterrupt(f"stopped at epoch {epoch} batch {i + 1}; resume with --resume (train.py) or run the same command again (slim.py)")
        return sums / max(count, 1)

    def evaluate(self, epoch):
        opt = self.opt
        if self.val_loader is None:
            self.val_loader = build_loader(self.data["valid"], self.img_size, opt.batch_size,
                                                  opt.workers, opt.val_max_images, self.net.nc)
        return evaluate(self.deployed(), self.val_loader, img_size=self.img_size, conf_thres=opt.conf_thres,
                               names=self.names, verbose=False, progress=not opt.quiet)

    def end_epoch(self, epoch, losses, epoch_s, stop):
        """Rank 0: evaluate, log, plot gammas and save; every rank: wait for it."""
        opt = self.opt
        s_used = self.sparsity.s_at(epoch) if self.sparsity else 0.0
        note = self.adapt_sparsity(epoch) if self.sparsity is not None else None   # before the state is saved
        if self.ddp.master:
            row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "s": s_used,
                   **dict(zip(("box", "obj", "cls", "loss", "kd"), losses.tolist())), "epoch_s": epoch_s}
            last = epoch + 1 == opt.epochs
            if last or (epoch + 1) % max(opt.eval_interval, 1) == 0:
                t0 = time.time()
                metrics = self.evaluate(epoch)
                row.update({k: metrics[k] for k in ("P", "R", "F1", "mAP50", "mAP50_95")}, eval_s=time.time() - t0)
            if self.sparsity is not None:
                row.update(self.log_gammas(epoch))
            self.results.append(row)
            self.print_row(row)
            if note:
                print(note, flush=True)
            improved = "mAP50" in row and row["mAP50"] > self.best_fitness
            if improved:
                self.best_fitness = row["mAP50"]
            state = self._state(epoch + 1, 0)
            save_outputs(self.deployed(), os.path.join(opt.out, "last"), state, opt.reader)
            if improved:
                save_outputs(self.deployed(), os.path.join(opt.out, "best"), state, opt.reader)
            write_results_csv(os.path.join(opt.out, "results.csv"), self.results)
            if self.tb is not None:
                for k, v in row.items():
                    self.tb.add_scalar(f"train/{k}", v, epoch + 1)
        self.ddp.barrier()

    def log_gammas(self, epoch):
        layers, net = self.sparsity.layers, self.deployed()   # the gammas that will be pruned
        record_gamma_history(self.gamma_history, epoch + 1, net, layers)
        plot_gamma_histogram(net, layers, os.path.join(self.opt.out, f"gamma_epoch{epoch + 1:03d}.png"),
                             f"epoch {epoch + 1}, s={self.sparsity.s_at(epoch):.2g}")
        plot_gamma_history(self.gamma_history, os.path.join(self.opt.out, "gamma_history.png"))
        log_gamma_tensorboard(self.tb, net, layers, epoch + 1)
        stats = gamma_stats(net, layers)
        goal = {"sparsity_goal": self.target.expected(epoch + 1)} if self.target is not None else {}
        return {"gamma_below_1e-2": stats["frac_below_1e-2"], "gamma_median": stats["q50"], **goal}

    def adapt_sparsity(self, epoch):
        """Every rank: the share of prunable gammas below 1e-2 sets next epoch's s (same gammas
        on every rank, so the same s); see yoloslim/train/sparsity_target.py for the rule."""
        self.share = share = gamma_stats(self.deployed(), self.sparsity.layers).get("frac_below_1e-2", 0.0)
        if self.target is None or epoch + 1 == self.opt.epochs:   # no next epoch to steer
            return None
        before = self.sparsity.s_at(epoch + 1)
        self.sparsity.gain = self.target.update(share, epoch + 1)
        after = self.sparsity.s_at(epoch + 1)
        if after == before:
            return None
        return (f"sparsity: {share:.1%} of prunable |gamma| below 1e-2, goal {self.target.expected(epoch + 1):.1%}: "
                f"s {before:.3g} -> {after:.3g}")

    def sparsity_warning(self, share):
        if self.target is not None:
            return self.target.shortfall(share, self.opt.s, self.opt.epochs, constant_lr=self.opt.lrf >= 1)
        return untrained_warning(share, self.opt.s)

    def print_row(self, row):
        shown = "  ".join(f"{k} {row[k]:.4g}" for k in ("loss", "P", "R", "mAP50", "mAP50_95",
                                                        "gamma_below_1e-2", "sparsity_goal") if k in row)
        if self.sparsity is not None:
            shown += f"  s {row['s']:.3g}"
        evaluated = f", eval {row['eval_s']:.1f} s" if "eval_s" in row else ""
        print(f"epoch {row['epoch']}/{self.opt.epochs}  {shown}  (train {row['epoch_s']:.1f} s{evaluated})", flush=True)

    def record_initial_gammas(self):
        if self.sparsity is not None and self.ddp.master and not self.gamma_history:
            record_gamma_history(self.gamma_history, 0, self.net, self.sparsity.layers)

    def run(self):
        opt = self.opt
        self.record_initial_gammas()
        t_start, share = time.time(), None
        with GracefulStop() as stop:
            for epoch in range(self.start_epoch, opt.epochs):
                if self.sparsity is not None:
                    self.sparsity.set_epoch(epoch)
                t0 = time.time()
                losses = self.train_epoch(epoch, stop)
                self.end_epoch(epoch, losses, time.time() - t0, stop)
                share = self.share
                if self.ddp.any(stop.requested) and epoch + 1 < opt.epochs:
                    raise KeyboardInterrupt(f"stopped after epoch {epoch + 1}; resume with --resume (train.py) or run the same command again (slim.py)")
        result = self.summary(time.time() - t_start)
        warning = self.sparsity_warning(share) if share is not None else None
        if share is not None:
            result["gamma_below_1e-2"] = share
            if self.target is not None:
                result["sparsity_target"], result["s_gain"] = self.target.target, self.target.gain
        if warning:
            result["sparsity_warning"] = warning
            if self.ddp.master:
                print(warning, flush=True)
        return result

    def summary(self, seconds):
        out = self.opt.out
        evaluated = [r for r in self.results if "mAP50" in r]
        final = evaluated[-1] if evaluated else {}
        return {"out": out, "last": os.path.join(out, "last.pt"), "best": os.path.join(out, "best.pt"),
                "last_weights": os.path.join(out, "last.weights"), "best_weights": os.path.join(out, "best.weights"),
                "results_csv": os.path.join(out, "results.csv"), "epochs": self.opt.epochs,
                "best_mAP50": self.best_fitness, "seconds": seconds,
                **{k: final[k] for k in ("P", "R", "F1", "mAP50", "mAP50_95") if k in final}}

    def close(self):
        if self.tb is not None:
            self.tb.close()
        self.ddp.close()
        torch.set_num_threads(self.threads_before)
        flush_denormals(self.flush_before)


def train(opt, on_batch_end=None):
    """Run training as described by ``opt`` (a ``TrainConfig``); returns final metrics and paths.

    ``on_batch_end(epoch, batch)`` is called after every optimizer step (tests use it to
    interrupt a run). A Ctrl-C saves last.pt and raises KeyboardInterrupt.
    """
    trainer = Trainer(opt, on_batch_end)
    try:
        return trainer.run()
    finally:
        trainer.close()

