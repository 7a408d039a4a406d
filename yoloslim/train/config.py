"""Every training option in one typed config: train.py parses into it, slim.py and the
benchmarks build it, the stage cache keys on its fields."""
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace

from yoloslim.data.datasets import DEFAULT_AUG_HYP
from yoloslim.errors import SlimError
from yoloslim.train.loss import DEFAULT_HYP, default_hyp

DEFAULT_EPOCHS = 30
# The BNs a sparsity run penalises are named as the prune policy that will cut them; Darknet
# toolkits' seeds number them, and train.py still takes the numbers.
SPARSITY_POLICIES = {"0": "normal", "1": "shortcut", "2": "tiny"}
# Fields that change where or how fast a run goes, not what it computes: a resumed run takes
# them from the command line, and the stage cache leaves them out of its key.
RUNTIME_FIELDS = {"resume", "exist_ok", "device", "workers", "threads", "out", "quiet", "epochs_given"}
INPUT_FIELDS = ("cfg", "data", "weights", "weights_cfg", "t_cfg", "t_weights")


@dataclass
class TrainConfig:
    data: str                              # .data file: classes, train, valid, names
    cfg: str = None                        # None: the cfg inside a --weights checkpoint of ours
    weights: str = None                    # Darknet .weights or our checkpoint; partial loading with cfg
    weights_cfg: str = None                # the cfg a Darknet weights file was trained with
    cutoff: int = None                     # load weights only into layers before this index
    freeze: int = 0                        # layers 0..N-1 take no step
    freeze_epochs: int = None              # unfreeze after this many epochs (None: never)
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 8
    img_size: int = None                   # None: the cfg's width
    out: str = "runs/train"
    exist_ok: bool = False
    resume: bool = False
    optimizer: str = "adam"                # 'adam' or 'sgd'
    lr0: float = None                      # None: 0.003 (Adam) or 0.01 (SGD)
    lrf: float = None                      # final LR / lr0 (cosine); None: 1.0 with sparsity, else 0.05
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    bn_momentum: float = 0.1
    hyp: list = field(default_factory=list)   # KEY=VALUE pairs and hyp files
    no_augment: bool = False
    multi_scale: bool = False
    ema: float = 0.999                     # 0 = off
    no_head_prior: bool = False
    sr: bool = False                       # L1 sparsity on BN gammas
    s: float = 0.02
    prune: str = "shortcut"                # which BNs: those this prune policy may cut
    sr_schedule: str = "constant"
    sparsity_target: float = None          # share of prunable |gamma| < 1e-2 to reach; s adapts (sparsity_target.py)
    t_cfg: str = None                      # distillation teacher
    t_weights: str = None
    kd_weight: float = 1.0
    kd_T: float = 2.0
    eval_interval: int = 1
    val_max_images: int = None
    conf_thres: float = 0.001
    workers: int = 0
    device: str = ""                       # '' = CUDA when available
    threads: int = None
    no_amp: bool = False
    seed: int = 0
    quiet: bool = False
    reader: str = "opencv"                 # whose BN arithmetic last/best.weights are written for (bn_readers.py)
    epochs_given: bool = True              # on resume, an explicit epoch count extends the run

    def __post_init__(self):
        self.prune = sparsity_policy(self.prune)
        if self.lr0 is None:
            self.lr0 = 0.003 if self.optimizer == "adam" else 0.01
        if self.lrf is None:
            self.lrf = 1.0 if self.sr else 0.05

    def key(self):
        """What the run computes: every field except the runtime ones."""
        return {k: v for k, v in sorted(asdict(self).items()) if k not in RUNTIME_FIELDS}

    def inputs(self):
        """The files the run reads, by field name (hyp files included)."""
        named = {k: getattr(self, k) for k in INPUT_FIELDS if getattr(self, k)}
        named.update({f"hyp:{h}": h for h in self.hyp if "=" not in h})
        return named

    def with_saved(self, saved):
        """This config with a resumed run's saved options, less the runtime ones (and the
        epoch count when it was given explicitly, which extends the run)."""
        names = {f.name for f in fields(self)}
        keep = RUNTIME_FIELDS | ({"epochs"} if self.epochs_given else set())
        return replace(self, **{k: v for k, v in saved.items() if k in names and k not in keep})


def sparsity_policy(name):
    """The policy name for a --prune value (a name, or the seeds' 0 / 1 / 2)."""
    from yoloslim.prune.engine import POLICIES
    name = SPARSITY_POLICIES.get(str(name), str(name))
    if name not in POLICIES:
        raise SlimError(f"--prune {name}: unknown; use one of {', '.join(POLICIES)} (or 0 normal, 1 shortcut, 2 tiny)")
    return name


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
