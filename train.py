"""Train a Darknet YOLO model, optionally with BN sparsity (network slimming) and distillation.

    python train.py --cfg cfg/yolov3-narrow.cfg --data data/shapes/shapes.data --epochs 20 --out runs/narrow
    python train.py ... --weights runs/narrow/best.pt -sr --s 0.005 --prune shortcut --out runs/narrow-sr
    python train.py ... --out runs/narrow --resume             # continue after an interruption
    torchrun --nproc_per_node 2 train.py ...                   # DDP (nccl on CUDA, gloo on CPU)

Outputs in --out: last.pt / best.pt (checkpoints with the cfg inside), last.weights /
best.weights (Darknet), results.csv (one row per epoch), and with -sr gamma_epochNNN.png plus
gamma_history.png. The run itself is ``yoloslim.train.trainer.train(TrainConfig(...))``.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
import os

# Before torch starts OpenMP: busy-waiting threads on a shared or oversubscribed CPU were
# measured up to 60x slower than passive ones (set the variable yourself to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402  (imports below follow the environment setting on purpose)

from yoloslim.cli import checks  # noqa: E402
from yoloslim.darknet.bn_readers import DEFAULT_READER, READER_HELP, READERS  # noqa: E402
from yoloslim.errors import SlimError, cli_main  # noqa: E402
from yoloslim.io import is_torch_file  # noqa: E402
from yoloslim.train.config import DEFAULT_EPOCHS, TrainConfig, parse_hyp, sparsity_policy  # noqa: E402
from yoloslim.train.trainer import train  # noqa: E402


def parse_args(argv=None):
    """The command line as a ``TrainConfig``."""
    p = checks.parser(__doc__.split("\n\n")[0], prog="train.py")
    p.add_argument("--cfg", type=checks.input_file, help="model .cfg (may be left out when --weights is a checkpoint of ours)")
    p.add_argument("--data", required=True, type=checks.input_file, help=".data file (classes, train, valid, names)")
    p.add_argument("--weights", type=checks.input_file, help="initial weights: Darknet weights or our checkpoint; with --cfg, every "
                   "layer whose shapes match is loaded and [yolo]-feeding convs of another class count are "
                   "re-initialised (Darknet's partial loading)")
    p.add_argument("--weights-cfg", type=checks.input_file, help="the cfg a Darknet --weights file was trained with (default: the .cfg "
                   "beside it, else solved from its size)")
    p.add_argument("--cutoff", type=checks.count, help="load --weights only into layers before this index")
    p.add_argument("--reader", choices=list(READERS), default=DEFAULT_READER,
                   help="last.weights/best.weights: " + READER_HELP)
    p.add_argument("--freeze", type=checks.count, default=0, help="freeze layers 0..N-1 (weights and BN statistics)")
    p.add_argument("--freeze-epochs", type=checks.count, help="unfreeze after this many epochs (default: all epochs)")
    p.add_argument("--epochs", type=checks.positive_int, default=None,
                   help=f"total epochs (default {DEFAULT_EPOCHS}); with --resume, a larger value extends the run")
    p.add_argument("--batch-size", type=checks.positive_int, default=8, help="total batch size over all DDP processes (8: more "
                   "steps beat bigger batches at this scale, docs/TRAINING.md)")
    p.add_argument("--img-size", type=checks.img_size,
                   help="train/test size in pixels, rounded up to a multiple of 32 (default: the cfg's width)")
    p.add_argument("--out", default="runs/train", type=checks.output_dir,
                   help="run folder for checkpoints and results; a new run takes --out-2, -3, ... when it exists")
    p.add_argument("--exist-ok", action="store_true", help="allow writing into an existing run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="adam",
                   help="Adam (default; measured better than SGD at this scale, docs/TRAINING.md) or SGD")
    p.add_argument("--adam", dest="optimizer", action="store_const", const="adam", help="same as --optimizer adam")
    p.add_argument("--lr0", type=checks.positive_float, help="initial learning rate (default: 0.003 Adam, 0.01 SGD); to "
                   "fine-tune a pruned model, start at the LR its training ended at, lr0 x lrf (0.003 x 0.05 = "
                   "0.00015 after a cosine run, 0.003 after a constant-LR sparsity run; docs/TRAINING.md)")
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
    p.add_argument("--prune", default="shortcut", metavar="POLICY",
                   help="which BNs get the penalty: those this prune policy may cut (normal, shortcut, tiny, "
                        "regular-pow2, regular-x8, l1; or the seeds' 0 normal, 1 shortcut, 2 tiny)")
    p.add_argument("--sr-schedule", choices=("constant", "linear", "step"), default="constant")
    p.add_argument("--sparsity-target", type=checks.open_fraction, default=None, metavar="SHARE",
                   help="with -sr: the share of prunable |gamma| that should fall below 1e-2 (the ratio you mean to "
                        "prune); s is doubled after each epoch the share lags a linear schedule that reaches SHARE at "
                        "3/4 of the epochs (at most 32x --s), and the run warns if it ends short")
    p.add_argument("--t_cfg", "--t-cfg", dest="t_cfg", type=checks.input_file, help="teacher cfg for knowledge distillation")
    p.add_argument("--t_weights", "--t-weights", dest="t_weights", type=checks.input_file,
                   help="teacher weights (Darknet weights or our checkpoint)")
    p.add_argument("--kd-weight", type=checks.non_negative_float, default=1.0, help="weight of the distillation loss")
    p.add_argument("--kd-T", type=checks.positive_float, default=2.0, help="distillation temperature")
    p.add_argument("--eval-interval", type=checks.positive_int, default=1, help="evaluate every N epochs (and at the last)")
    p.add_argument("--val-max-images", type=checks.positive_int, help="evaluate on at most this many validation images")
    p.add_argument("--conf-thres", type=checks.fraction, default=0.001, help="evaluation confidence threshold, in [0, 1]")
    p.add_argument("--workers", type=checks.count, default=min(4, os.cpu_count() or 1), help="data loader processes")
    checks.add_device(p)
    p.add_argument("--threads", type=checks.positive_int, help="CPU threads for torch (default: torch's; 1 per process under DDP); "
                   "on a busy machine 1 can be faster than 2")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--seed", type=checks.count, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    opt = p.parse_args(argv)
    if not opt.resume and not opt.cfg and not (opt.weights and is_torch_file(opt.weights)):
        p.error("--cfg is required unless --weights is a checkpoint of ours (which holds its cfg)")
    if opt.sparsity_target is not None and not opt.sr:
        p.error("--sparsity-target steers sparsity training; add -sr (and --prune for the policy you will prune with)")
    if opt.sparsity_target is not None and opt.sr_schedule != "constant":
        p.error(f"--sparsity-target sets s epoch by epoch, --sr-schedule {opt.sr_schedule} decays it: pass only one")
    if bool(opt.t_cfg) != bool(opt.t_weights) and not (opt.t_weights and is_torch_file(opt.t_weights)):
        p.error("distillation needs --t_weights (and --t_cfg unless the weights are a checkpoint of ours)")
    try:
        opt.prune = sparsity_policy(opt.prune)
    except SlimError as e:
        p.error(str(e))
    opt.epochs_given = opt.epochs is not None   # on --resume only an explicit --epochs overrides the saved one
    if opt.epochs is None:
        opt.epochs = DEFAULT_EPOCHS
    return TrainConfig(**vars(opt))


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
