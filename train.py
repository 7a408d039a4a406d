"""Train a Darknet YOLO model, optionally with BN sparsity (network slimming) and distillation.

    python train.py --cfg cfg/yolov3-narrow.cfg --data data/shapes/shapes.data --epochs 20 --out runs/narrow
    python train.py ... --weights runs/narrow/best.pt -sr --s 0.005 --prune 1 --out runs/narrow-sr
    python train.py ... --out runs/narrow --resume             # continue after an interruption
    torchrun --nproc_per_node 2 train.py ...                   # DDP (nccl on CUDA, gloo on CPU)

Outputs in --out: last.pt / best.pt (checkpoints with the cfg inside), last.weights /
best.weights (Darknet), results.csv (one row per epoch), and with -sr gamma_epochNNN.png plus
gamma_history.png.

Reproducibility: the shuffle order of an epoch and the random state of every batch are
functions of (--seed, epoch, batch), so a run resumed from last.pt, even one interrupted in
the middle of an epoch, continues exactly as the uninterrupted run would (bit for bit on CPU
with --workers 0; with worker processes, augmentation randomness lives in the workers).
"""
import os

# Before torch starts OpenMP: busy-waiting threads on a shared or oversubscribed CPU were
# measured up to 60x slower than passive ones (set the variable yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import csv  # noqa: E402  (imports below follow the environment setting on purpose)
import math
import random
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

import test as tester
from models import Darknet, load_checkpoint, load_model, model_from_checkpoint, save_checkpoint
from utils.datasets import DEFAULT_AUG_HYP, LoadImagesAndLabels
from utils.ema import ModelEMA
from utils.distill import check_compatible, distillation_loss, head_logits, teacher_outputs
from utils.errors import DataError, SlimError, cli_main
from utils import cli_checks as checks
from utils.io import atomic_write, is_torch_file
from utils.loss import DEFAULT_HYP, compute_loss, default_hyp, init_head_biases
from utils.parse_config import load_classes, parse_cfg_text, parse_data_cfg
from utils.sparsity import (BNSparsity, gamma_stats, log_gamma_tensorboard, plot_gamma_histogram,
                            plot_gamma_history, record_gamma_history, tensorboard_writer)
from utils.torch_utils import flush_denormals
from utils.transfer import TransferReport, keep_frozen_bn_eval, load_partial

RESULT_FIELDS = ["epoch", "lr", "s", "box", "obj", "cls", "kd", "loss", "P", "R", "F1", "mAP50", "mAP50_95",
                 "gamma_below_1e-2", "gamma_median", "epoch_s", "eval_s"]
# Options a resumed run takes from the command line rather than from the checkpoint: they
# change where and how fast it runs, not what it computes.
RUNTIME_OPTIONS = {"resume", "exist_ok", "device", "workers", "threads", "out", "quiet", "epochs_given"}
DEFAULT_EPOCHS = 30


# ----------------------------------------------------------------------------- options
def parse_args(argv=None):
    p = checks.parser(__doc__.split("\n\n")[0], prog="train.py")
    p.add_argument("--cfg", type=checks.input_file, help="model .cfg (may be left out when --weights is a checkpoint of ours)")
    p.add_argument("--data", required=True, type=checks.input_file, help=".data file (classes, train, valid, names)")
    p.add_argument("--weights", type=checks.input_file, help="initial weights: Darknet weights or our checkpoint; with --cfg, every "
                   "layer whose shapes match is loaded and [yolo]-feeding convs of another class count are "
                   "re-initialised (Darknet's partial loading)")
    p.add_argument("--weights-cfg", type=checks.input_file, help="the cfg a Darknet --weights file was trained with (default: the .cfg "
                   "beside it, else solved from its size)")
    p.add_argument("--cutoff", type=checks.count, help="load --weights only into layers before this index")
    p.add_argument("--freeze", type=checks.count, default=0, help="freeze layers 0..N-1 (weights and BN statistics)")
    p.add_argument("--freeze-epochs", type=checks.count, help="unfreeze after this many epochs (default: all epochs)")
    p.add_argument("--epochs", type=checks.positive_int, default=None,
                   help=f"total epochs (default {DEFAULT_EPOCHS}); with --resume, a larger value extends the run")
    p.add_argument("--batch-size", type=checks.positive_int, default=8, help="total batch size over all DDP processes (8: more "
                   "steps beat bigger batches at this scale, docs/TRAINING.md)")
    p.add_argument("--img-size", type=checks.img_size,
                   help="train/test size in pixels, rounded up to a multiple of 32 (default: the cfg's width)")
    p.add_argument("--out", default="runs/train", type=checks.output_dir, help="run folder for checkpoints and results")
    p.add_argument("--exist-ok", action="store_true", help="allow writing into an existing run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="adam",
                   help="Adam (default; measured better than SGD at this scale, docs/TRAINING.md) or SGD")
    p.add_argument("--adam", dest="optimizer", action="store_const", const="adam", help="same as --optimizer adam")
    p.add_argument("--lr0", type=checks.positive_float, help="initial learning rate (default: 0.003 Adam, 0.01 SGD)")
    p.add_argument("--lrf", type=checks.non_negative_float, help="final LR as a fraction of lr0 (cosine; default 0.05, and 1.0 = "
                   "constant with -sr: under Adam a gamma moves about lr per step, so a decaying LR stops the "
                   "collapse)")
    p.add_argument("--momentum", type=checks.number(float, lo=0, hi=1, hi_open=True), default=0.937,
                   help="SGD momentum / Adam beta1, in [0, 1)")
    p.add_argument("--weight-decay", type=checks.non_negative_float, default=5e-4, help="on conv weights only (not BN, not biases)")
    p.add_argument("--warmup-epochs", type=checks.non_negative_float, default=1.0, help="linear LR warm-up length")
    p.add_argument("--bn-momentum", type=checks.fraction, default=0.1,
                   help="BN running-stat momentum while training (the model's 0.03 lags far behind "
                        "the weights in short runs, which makes eval-mode mAP look near zero)")
    p.add_argument("--hyp", nargs="*", default=[], metavar="KEY=VALUE|FILE",
                   help="loss and augmentation hyperparameters as KEY=VALUE pairs and/or hyp files (one KEY=VALUE "
                        "per line, # comments; see cfg/hyp.txt): loss giou obj cls anchor_t match ...; augmentation "
                        "fliplr flipud scale translate degrees shear hsv_h hsv_s hsv_v mosaic")
    p.add_argument("--no-augment", action="store_true", help="train without data augmentation")
    p.add_argument("--multi-scale", action="store_true",
                   help="every batch at a random size in [2/3, 4/3] x --img-size (multiples of 32)")
    p.add_argument("--ema", type=checks.number(float, lo=0, hi=1, hi_open=True), default=0.999, help="weight EMA decay; evaluated and saved weights are "
                   "the average (0 = off)")
    p.add_argument("--no-head-prior", action="store_true",
                   help="leave fresh heads at zero-mean init instead of the objectness/class prior (for ablations)")
    p.add_argument("-sr", "--sr", action="store_true", help="sparsity training: L1 on BN gammas")
    p.add_argument("--s", type=checks.non_negative_float, default=0.02, help="sparsity strength (0.02 with Adam lr 0.003 and a "
                   "constant LR collapsed 71%% of the narrow model's gammas below 1e-2 in 450 steps)")
    p.add_argument("--prune", type=int, choices=(0, 1, 2), default=1,
                   help="which BNs: 0 normal (skip shortcut groups), 1 shortcut (all prunable), 2 tiny")
    p.add_argument("--sr-schedule", choices=("constant", "linear", "step"), default="constant")
    p.add_argument("--t_cfg", "--t-cfg", dest="t_cfg", type=checks.input_file, help="teacher cfg for knowledge distillation")
    p.add_argument("--t_weights", "--t-weights", dest="t_weights", type=checks.input_file,
                   help="teacher weights (Darknet weights or our checkpoint)")
    p.add_argument("--kd-weight", type=checks.non_negative_float, default=1.0, help="weight of the distillation loss")
    p.add_argument("--kd-T", type=checks.positive_float, default=2.0, help="distillation temperature")
    p.add_argument("--eval-interval", type=checks.positive_int, default=1, help="evaluate every N epochs (and at the last)")
    p.add_argument("--val-max-images", type=checks.positive_int, help="evaluate on at most this many validation images")
    p.add_argument("--conf-thres", type=checks.fraction, default=0.001, help="evaluation confidence threshold, in [0, 1]")
    p.add_argument("--workers", type=checks.count, default=min(4, os.cpu_count() or 1), help="data loader processes")
    p.add_argument("--device", default="", help="'', 'cpu', 'cuda' or 'cuda:N' ('' = cuda if available)")
    p.add_argument("--threads", type=checks.positive_int, help="CPU threads for torch (default: torch's; 1 per process under DDP); "
                   "on a busy machine 1 can be faster than 2")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--seed", type=checks.count, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    opt = p.parse_args(argv)
    if opt.lr0 is None:
        opt.lr0 = 0.003 if opt.optimizer == "adam" else 0.01
    if opt.lrf is None:
        opt.lrf = 1.0 if opt.sr else 0.05
    opt.epochs_given = opt.epochs is not None   # on --resume only an explicit --epochs overrides the saved one
    if opt.epochs is None:
        opt.epochs = DEFAULT_EPOCHS
    if not opt.resume and not opt.cfg and not (opt.weights and is_torch_file(opt.weights)):
        p.error("--cfg is required unless --weights is a checkpoint of ours (which holds its cfg)")
    if bool(opt.t_cfg) != bool(opt.t_weights) and not (opt.t_weights and is_torch_file(opt.t_weights)):
        p.error("distillation needs --t_weights (and --t_cfg unless the weights are a checkpoint of ours)")
    return opt


def validate_inputs(opt):
    """The .data, its lists and names, and the cfgs, checked before the run folder or a model exists."""
    data = checks.check_data(opt.data, lists=("train", "valid"))
    parse_hyp(opt.hyp)
    for cfg in (opt.cfg, opt.t_cfg, opt.weights_cfg):
        if cfg and not opt.resume:
            defs = checks.check_cfg(cfg)
            if cfg == opt.cfg:
                checks.check_classes(checks.cfg_classes(defs), data, opt.data)
    return data


def hyp_pairs(items):
    """(KEY, VALUE, where) from --hyp items: KEY=VALUE pairs and hyp files of such lines."""
    for item in items:
        if "=" in item:
            yield (*item.split("=", 1), "--hyp")
        elif os.path.isfile(item):
            with open(item, encoding="utf-8", errors="replace") as f:   # a binary file fails on its first line
                for lineno, line in enumerate(f, 1):
                    line = line.split("#", 1)[0].strip()
                    if not line:
                        continue
                    if "=" not in line:
                        raise SlimError(f"{item}:{lineno}: expected KEY=VALUE, got {line!r}")
                    yield (*line.split("=", 1), f"{item}:{lineno}")
        else:
            raise SlimError(f"--hyp {item!r}: neither KEY=VALUE nor an existing hyp file")


def parse_hyp(items):
    """(loss hyperparameters, augmentation hyperparameters) from --hyp; later items win."""
    loss, aug = {}, {}
    for key, value, where in hyp_pairs(items):
        key, value = key.strip(), value.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and (not math.isfinite(number) or number < 0):
            raise SlimError(f"{where} {key}={value}: must be a finite number >= 0")
        if key in DEFAULT_AUG_HYP:
            if number is None:
                raise SlimError(f"{where}: {key}={value!r} is not a number")
            aug[key] = number
        elif key in DEFAULT_HYP:
            loss[key] = value if number is None else number
        else:
            raise SlimError(f"{where}: unknown hyperparameter {key!r}; loss: {', '.join(sorted(DEFAULT_HYP))}; "
                            f"augmentation: {', '.join(sorted(DEFAULT_AUG_HYP))}")
    for key in ("fliplr", "flipud", "mosaic"):
        if not 0 <= aug.get(key, 0) <= 1:
            raise SlimError(f"--hyp {key}={aug[key]:g}: a probability must be in [0, 1]")
    try:
        return default_hyp(**loss), {**DEFAULT_AUG_HYP, **aug}
    except ValueError as e:
        raise SlimError(f"--hyp: {e}") from None


# ----------------------------------------------------------------------------- distributed setup
class Dist:
    """Rank / world size when launched by torchrun, and the process group it needs."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.master = self.rank == 0

    def init(self, device):
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def any(self, flag):
        """True on every rank when ``flag`` is true on any: all ranks stop at the same batch."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self):
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def select_device(name, ddp):
    if name == "cpu" or (not name and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SlimError(f"--device {name}: CUDA is not available here; use --device cpu")
    if ddp.enabled:
        torch.cuda.set_device(ddp.local_rank)
        return torch.device("cuda", ddp.local_rank)
    return torch.device(name if name.startswith("cuda") else f"cuda:{name}" if name.isdigit() else "cuda")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def batch_seed(seed, epoch, batch):
    """A distinct, reproducible seed for every (run seed, epoch, batch)."""
    return (seed * 1_000_003 + epoch * 10_007 + batch) % 2 ** 31


def rng_state():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- run folder
def prepare_run_folder(opt, ddp):
    """Refuse to reuse a non-empty run folder unless --resume or --exist-ok."""
    exists = os.path.isdir(opt.out) and os.listdir(opt.out)
    if opt.resume and not os.path.isfile(os.path.join(opt.out, "last.pt")):
        raise SlimError(f"{opt.out}: no last.pt to resume from; start the run without --resume")
    if exists and not (opt.resume or opt.exist_ok):
        raise SlimError(f"{opt.out}: run folder exists and is not empty; pick another --out, "
                        f"or pass --resume to continue it or --exist-ok to write into it")
    if exists:   # even with --exist-ok: never into a folder of the user's (a data set, say)
        from utils.owned import check_claimable, has_any
        check_claimable(opt.out, "--out", legacy=has_any("last.pt", "results.csv", "stage.json", "tb"))
    ddp.barrier()  # every rank checks before rank 0 creates the folder (at the end of setup)


def apply_saved_options(opt, saved):
    """On --resume the run continues with the options it was started with."""
    extend = getattr(opt, "epochs_given", False)   # an explicit --epochs N extends (or keeps) the run
    for key, value in saved.items():
        if key not in RUNTIME_OPTIONS and hasattr(opt, key) and not (key == "epochs" and extend):
            setattr(opt, key, value)
    return opt


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
    if opt.t_cfg:
        teacher = load_model(opt.t_cfg, opt.t_weights, opt.img_size)
    else:
        teacher = model_from_checkpoint(opt.t_weights, opt.img_size)
    check_compatible(student, teacher)
    teacher.to(device).eval()
    for prm in teacher.parameters():
        prm.requires_grad_(False)
    return teacher


def check_classes(model, data, data_path):
    checks.check_classes(model.nc, data, data_path)


class ResumableSampler(Sampler):
    """DistributedSampler order for (seed, epoch), minus the batches already done in that epoch."""

    def __init__(self, dataset, ddp, seed, batch_size):
        self.base = DistributedSampler(dataset, num_replicas=ddp.world, rank=ddp.rank, shuffle=True, seed=seed)
        self.batch_size, self.skip = batch_size, 0

    def set_epoch(self, epoch, start_batch=0):
        self.base.set_epoch(epoch)
        self.skip = start_batch * self.batch_size

    def __iter__(self):
        return iter(list(self.base)[self.skip:])

    def __len__(self):
        return max(len(self.base) - self.skip, 0)


def _seed_worker(worker_id):
    # each worker's numpy/random follow torch's per-worker seed, so augmentation is reproducible
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(opt, data, ddp, img_size, nc, aug_hyp=None):
    dataset = LoadImagesAndLabels(data["train"], img_size, opt.batch_size, augment=not opt.no_augment,
                                  hyp=aug_hyp, nc=nc)
    if len(dataset) == 0:
        raise DataError(f"{data['train']}: no training images")
    per_rank = max(opt.batch_size // ddp.world, 1)
    sampler = ResumableSampler(dataset, ddp, opt.seed, per_rank)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=opt.workers,
                        collate_fn=LoadImagesAndLabels.collate_fn, pin_memory=torch.cuda.is_available(),
                        worker_init_fn=_seed_worker, drop_last=False)
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


# ----------------------------------------------------------------------------- stop on SIGINT
class GracefulStop:
    """First Ctrl-C: finish the current batch, save last.pt, stop. Second: stop now."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: saving last.pt after this batch (Ctrl-C again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


# ----------------------------------------------------------------------------- outputs
def save_outputs(net, path_stem, ckpt_extra):
    save_checkpoint(net.checkpoint(**ckpt_extra), path_stem + ".pt")
    net.save_darknet_weights(path_stem + ".weights")


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
        if self.ckpt is not None:
            apply_saved_options(opt, self.ckpt["opt"])
        seed_everything(opt.seed)
        self.hyp, self.aug_hyp = parse_hyp(opt.hyp)
        self.data = parse_data_cfg(opt.data)
        for key in ("train", "valid"):
            if not self.data.get(key):
                raise DataError(f"{opt.data}: no '{key}=' line; add the image list path")
        self.names = load_classes(self.data["names"]) if self.data.get("names") else None
        self.net, self.transfer = build_model(opt, self.device, self.ckpt)
        set_bn_momentum(self.net, opt.bn_momentum)
        check_classes(self.net, self.data, opt.data)
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
        if self.ddp.master:   # only now: a run refused during setup leaves no folder behind
            os.makedirs(opt.out, exist_ok=True)
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
                 "gamma_history": self.gamma_history, "rng": rng_state(), "opt": vars(self.opt),
                 "scaler": self.scaler.state_dict() if self.amp else {}}
        if self.ema is not None:   # "model" holds the averaged weights; training resumes from these
            state.update(train_model=self.net.state_dict(), ema_updates=self.ema.updates)
        if self.sparsity is not None:
            state["sparsity"] = self.sparsity.state_dict()
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
            save_outputs(self.deployed(), os.path.join(self.opt.out, "last"), self._state(epoch, batch, partial))

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
                raise KeyboardInterrupt(f"stopped at epoch {epoch} batch {i + 1}; resume with --resume")
        return sums / max(count, 1)

    def evaluate(self, epoch):
        opt = self.opt
        if self.val_loader is None:
            self.val_loader = tester.build_loader(self.data["valid"], self.img_size, opt.batch_size,
                                                  opt.workers, opt.val_max_images, self.net.nc)
        return tester.evaluate(self.deployed(), self.val_loader, img_size=self.img_size, conf_thres=opt.conf_thres,
                               names=self.names, verbose=False, progress=not opt.quiet)

    def end_epoch(self, epoch, losses, epoch_s, stop):
        """Rank 0: evaluate, log, plot gammas and save; every rank: wait for it."""
        opt = self.opt
        if self.ddp.master:
            row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                   "s": self.sparsity.s_at(epoch) if self.sparsity else 0.0,
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
            improved = "mAP50" in row and row["mAP50"] > self.best_fitness
            if improved:
                self.best_fitness = row["mAP50"]
            state = self._state(epoch + 1, 0)
            save_outputs(self.deployed(), os.path.join(opt.out, "last"), state)
            if improved:
                save_outputs(self.deployed(), os.path.join(opt.out, "best"), state)
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
        return {"gamma_below_1e-2": stats["frac_below_1e-2"], "gamma_median": stats["q50"]}

    def print_row(self, row):
        shown = "  ".join(f"{k} {row[k]:.4g}" for k in ("loss", "P", "R", "mAP50", "mAP50_95",
                                                        "gamma_below_1e-2") if k in row)
        evaluated = f", eval {row['eval_s']:.1f} s" if "eval_s" in row else ""
        print(f"epoch {row['epoch']}/{self.opt.epochs}  {shown}  (train {row['epoch_s']:.1f} s{evaluated})", flush=True)

    def record_initial_gammas(self):
        if self.sparsity is not None and self.ddp.master and not self.gamma_history:
            record_gamma_history(self.gamma_history, 0, self.net, self.sparsity.layers)

    def run(self):
        opt = self.opt
        self.record_initial_gammas()
        t_start = time.time()
        with GracefulStop() as stop:
            for epoch in range(self.start_epoch, opt.epochs):
                if self.sparsity is not None:
                    self.sparsity.set_epoch(epoch)
                t0 = time.time()
                losses = self.train_epoch(epoch, stop)
                self.end_epoch(epoch, losses, time.time() - t0, stop)
                if self.ddp.any(stop.requested) and epoch + 1 < opt.epochs:
                    raise KeyboardInterrupt(f"stopped after epoch {epoch + 1}; resume with --resume")
        return self.summary(time.time() - t_start)

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
    """Run training as described by ``opt`` (from ``parse_args``); returns final metrics and paths.

    ``on_batch_end(epoch, batch)`` is called after every optimizer step (tests use it to
    interrupt a run). A Ctrl-C saves last.pt and raises KeyboardInterrupt.
    """
    trainer = Trainer(opt, on_batch_end)
    try:
        return trainer.run()
    finally:
        trainer.close()


def resume_command(opt):
    """The command line that continues this run from its last.pt."""
    import shlex
    return shlex.join(["python", sys.argv[0] if sys.argv[0].endswith(".py") else "train.py",
                       "--data", opt.data, "--out", opt.out, "--resume"])


def main(argv=None):
    opt = parse_args(argv)
    validate_inputs(opt)
    try:
        result = train(opt)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0 and os.path.isfile(os.path.join(opt.out, "last.pt")):
            print(f"last.pt saved; to continue this run: {resume_command(opt)}", file=sys.stderr)
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: best mAP50 {result['best_mAP50']:.4f}; weights in {result['out']}")


if __name__ == "__main__":
    cli_main(main)
