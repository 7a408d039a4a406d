"""Training, loss, sparsity, distillation and evaluation on a tiny synthetic data set.

Everything runs on CPU at 128 px with the narrow cfg: the whole file takes well under
three minutes on two cores.
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from yoloslim.eval import evaluate as tester
import train
from yoloslim.darknet.model import Darknet
from yoloslim.darknet.weights import load_checkpoint
from yoloslim.data.datasets import LoadImagesAndLabels
from yoloslim.train.distill import distillation_loss
from yoloslim.errors import SlimError
from yoloslim.train.loss import compute_loss, default_hyp, init_head_biases
from yoloslim.train.sparsity import policy_layers as sparsity_layers
from yoloslim.train.sparsity import (BNSparsity, gamma_stats, log_histograms, plot_gamma_histogram, plot_gamma_history,
                            record_gamma_history)
from yoloslim.data.synthetic import generate
from yoloslim.deploy.measure import randomize_weights
from conftest import HANG_LIMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NARROW = os.path.join(ROOT, "cfg", "yolov3-narrow.cfg")
IMG = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    generate(str(out), n_train=24, n_val=8, img_size=IMG, seed=0, workers=1, progress=False)
    return str(out / "shapes.data")


def train_args(data, out, *extra, epochs=2):
    return train.parse_args(["--cfg", NARROW, "--data", data, "--epochs", str(epochs), "--batch-size", "8",
                             "--img-size", str(IMG), "--workers", "0", "--out", str(out), "--quiet",
                             "-sr", "--s", "0.01", "--sr-schedule", "linear", *extra])


@pytest.fixture(scope="module")
def two_epoch_run(shapes, tmp_path_factory):
    """An uninterrupted 2-epoch sparsity run, shared by the tests that need a trained run."""
    out = tmp_path_factory.mktemp("runs") / "full"
    return train.train(train_args(shapes, out))


def fixed_batch(data, n=8):
    from yoloslim.darknet.cfg import parse_data_cfg
    ds = LoadImagesAndLabels(parse_data_cfg(data)["train"], IMG, augment=False, nc=5)
    return LoadImagesAndLabels.collate_fn([ds[i] for i in range(n)])


def max_state_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ----------------------------------------------------------------------------- loss
def test_loss_decreases_on_a_fixed_batch(shapes):
    torch.manual_seed(0)
    imgs, targets, _, _ = fixed_batch(shapes, 4)
    model = Darknet(NARROW).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss, items = compute_loss(model(imgs), targets, model, img_hw=imgs.shape[-2:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(items[3].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0], losses


def test_loss_strides_from_cfg_equal_strides_from_input(shapes):
    imgs, targets, _, _ = fixed_batch(shapes, 2)
    model = Darknet(NARROW).train()
    p = model(imgs)
    a, _ = compute_loss(p, targets, model, img_hw=imgs.shape[-2:])
    b, _ = compute_loss(p, targets, model)
    assert torch.allclose(a, b)
    for match in ("ratio", "iou"):
        loss, items = compute_loss(p, targets[:0], model, default_hyp(match=match))   # no objects
        assert torch.isfinite(loss) and items[0] == 0 and items[2] == 0 and items[1] > 0


def test_head_bias_init_starts_objectness_at_the_prior():
    torch.manual_seed(0)
    model = init_head_biases(Darknet(NARROW), 320).eval()
    with torch.no_grad():
        _, p = model(torch.rand(1, 3, 320, 320))
    for pi in p:
        prior = 8 / (pi.shape[2] * pi.shape[3])          # ~8 objects per head, not 0.5 per cell
        assert prior / 3 < torch.sigmoid(pi[..., 4]).mean() < prior * 3


# ----------------------------------------------------------------------------- sparsity
def backward_once(model):
    model.train()
    p = model(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    sum(pi.pow(2).mean() for pi in p).backward()


def test_sparsity_adds_s_sign_gamma_to_selected_bns_only():
    model = randomize_weights(Darknet(NARROW), seed=3)
    with torch.no_grad():  # give some gammas a negative sign so sign() is really exercised
        for _, _, bn in model.conv_layers():
            if bn is not None:
                bn.weight[::3].neg_()
    backward_once(model)
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    s = 0.01
    sparsity = BNSparsity(model, "shortcut", s=s)
    assert sparsity.apply() == s
    selected = {f"module_list.{i}.BatchNorm2d.weight" for i in sparsity.layers}
    for name, prm in model.named_parameters():
        delta = prm.grad - before[name]
        if name in selected:
            assert torch.allclose(delta, s * torch.sign(prm.detach()), atol=1e-7), name
        else:
            assert torch.equal(delta, torch.zeros_like(delta)), name


def test_sparsity_modes_differ_on_a_cfg_with_shortcuts():
    model = Darknet(NARROW)
    normal, shortcut = BNSparsity(model, 0).layers, BNSparsity(model, 1).layers
    assert normal == sparsity_layers(model.module_defs, 0)
    assert set(normal) < set(shortcut)          # mode 1 adds the convs meeting at shortcuts


def test_sparsity_schedules_and_state_roundtrip():
    model = Darknet(NARROW)
    linear = BNSparsity(model, 1, s=0.01, schedule="linear", epochs=10)
    assert [round(linear.s_at(e), 6) for e in (0, 5, 10)] == [0.01, 0.0055, 0.001]
    step = BNSparsity(model, 1, s=0.01, schedule="step", epochs=10)
    assert [step.s_at(e) for e in (0, 4.9, 5, 7.9, 8, 9)] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.001, 0.001])
    assert BNSparsity(model, 1, s=0.01, epochs=10).s_at(9) == 0.01
    linear.set_epoch(3)
    other = BNSparsity(model, 1, s=0.5, epochs=2)
    other.load_state_dict(linear.state_dict())
    assert other.s_at() == linear.s_at() and other.schedule == "linear"
    with pytest.raises(ValueError):
        BNSparsity(model, 0).load_state_dict(linear.state_dict())


def test_gamma_stats_and_plots(tmp_path):
    model = randomize_weights(Darknet(NARROW), seed=0)
    layers = sparsity_layers(model.module_defs, 1)
    with torch.no_grad():
        model.module_list[layers[0]].BatchNorm2d.weight.zero_()
    stats = gamma_stats(model, layers)
    assert 0 < stats["frac_below_1e-2"] < 1 and stats["q10"] <= stats["q50"] <= stats["q90"]
    history = []
    for epoch in range(3):
        record_gamma_history(history, epoch, model, layers)
    assert plot_gamma_histogram(model, layers, tmp_path / "h.png", "t") and (tmp_path / "h.png").stat().st_size > 0
    plot_gamma_history(history, tmp_path / "hist.png")
    assert (tmp_path / "hist.png").read_bytes()[:4] == b"\x89PNG"


def test_log_histograms_count_every_gamma_on_one_axis():
    import numpy as np
    before, after = np.array([0.5, 1.0, 1.2]), np.array([0.0, 1e-6, 5e-3, 0.02, 0.9])
    h = log_histograms([before, after], bins=10)
    assert len(h["edges"]) == 11 and h["edges"][-1] >= 1.2
    assert [sum(c) for c in h["counts"]] == [3, 5]
    assert h["counts"][1][0] == 2                      # 0 and 1e-6 are drawn in the first bin
    assert h["below_1e-2"] == [0.0, 0.6]


# ----------------------------------------------------------------------------- distillation
def test_distillation_loss_zero_for_identical_outputs_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    heads = [torch.randn(2, 3, s, s, 10, generator=g) for s in (4, 8)]
    assert distillation_loss(heads, [h.clone() for h in heads]).item() == 0.0
    other = [h + 0.3 * torch.randn(h.shape, generator=g) for h in heads]
    assert distillation_loss(heads, other).item() > 0
    student = [h.clone().requires_grad_() for h in heads]
    distillation_loss(student, other).backward()
    assert all(s.grad.abs().sum() > 0 for s in student)
    with pytest.raises(SlimError):
        distillation_loss(heads, [h[:, :2] for h in heads])


# ----------------------------------------------------------------------------- training runs
def test_train_writes_outputs_and_evaluates(shapes, two_epoch_run, tmp_path):
    out = two_epoch_run["out"]
    for name in ("last.pt", "best.pt", "last.weights", "best.weights", "results.csv", "gamma_history.png",
                 "gamma_epoch001.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "results.csv")) as f:
        rows = f.read().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 3
    ckpt = load_checkpoint(two_epoch_run["last"])
    assert ckpt["epoch"] == 2 and ckpt["sparsity"]["schedule"] == "linear" and "cfg" in ckpt
    model = Darknet(NARROW)
    model.load_checkpoint_state(ckpt)
    metrics = tester.evaluate(model, shapes, img_size=IMG, batch_size=4, verbose=False, progress=False)
    for key in ("P", "R", "F1", "mAP50", "mAP50_95"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["seen"] == 8 and len(metrics["ap50"]) == len(metrics["ap_class"])
    # an existing run folder is never reused by accident: a new run with the same --out takes out-2
    before = open(two_epoch_run["last"], "rb").read()
    again = train.train(train_args(shapes, out, epochs=1))
    assert again["out"] == str(out) + "-2" and os.path.isfile(os.path.join(again["out"], "last.pt"))
    assert open(two_epoch_run["last"], "rb").read() == before


def test_resume_after_interrupt_matches_uninterrupted_run(shapes, two_epoch_run, tmp_path):
    out = tmp_path / "interrupted"

    def interrupt(epoch, batch):
        if (epoch, batch) == (0, 1):           # a Ctrl-C in the middle of the first epoch
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train.train(train_args(shapes, out), on_batch_end=interrupt)
    saved = load_checkpoint(out / "last.pt")
    assert (saved["epoch"], saved["batch"]) == (0, 2)
    train.train(train_args(shapes, out, "--resume"))
    full = load_checkpoint(two_epoch_run["last"])
    resumed = load_checkpoint(out / "last.pt")
    assert max_state_diff(full["model"], resumed["model"]) < 1e-6
    assert resumed["sparsity"] == full["sparsity"]


def test_distillation_run_with_a_frozen_teacher(shapes, two_epoch_run, tmp_path):
    opt = train_args(shapes, tmp_path / "kd", "--weights", two_epoch_run["last"], "--t_cfg", NARROW,
                     "--t_weights", two_epoch_run["last"], "--kd-weight", "2", "--val-max-images", "4", epochs=1)
    result = train.train(opt)
    with open(result["results_csv"]) as f:
        header, row = f.read().splitlines()[:2]
    kd = float(row.split(",")[header.split(",").index("kd")])
    assert kd >= 0 and 0 <= result["mAP50"] <= 1


def test_ddp_two_processes_gloo_sparsify_the_same_bns(shapes, tmp_path):
    out = tmp_path / "ddp"
    # '--' keeps torchrun's own parser from reading train.py's '--s' as an abbreviation of its options
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
           os.path.join(ROOT, "train.py"), "--cfg", NARROW, "--data", shapes, "--epochs", "1", "--batch-size", "8",
           "--img-size", str(IMG), "--workers", "0", "--out", str(out), "--quiet", "-sr", "--s", "0.01",
           "--prune", "0", "--device", "cpu", "--val-max-images", "4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "last.pt")
    single = BNSparsity(Darknet(NARROW), "normal")
    assert ckpt["sparsity"]["layers"] == single.layers
    assert ckpt["opt"]["prune"] == "normal" and os.path.isfile(out / "results.csv")


def test_cli_help_and_weights_file(shapes, two_epoch_run):
    for script in ("train.py", "test.py"):
        proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=SUBPROCESS_ENV,
                              capture_output=True, text=True)
        assert proc.returncode == 0 and "--data" in proc.stdout
    proc = subprocess.run([sys.executable, "test.py", "--cfg", NARROW, "--data", shapes, "--weights",
                           two_epoch_run["last_weights"], "--img-size", str(IMG)], cwd=ROOT,
                          env=SUBPROCESS_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "all" in proc.stdout


# ----------------------------------------------------------------------------- hyperparameters, mosaic, EMA
def test_hyp_file_sets_loss_and_augmentation_keys(tmp_path):
    hyp_file = tmp_path / "hyp.txt"
    hyp_file.write_text("# no mirroring for this data\nfliplr=0  # text\nscale=0.2\ncls=0.3\n")
    loss, aug = train.parse_hyp([str(hyp_file), "scale=0.1", "mosaic=0.5"])
    assert (aug["fliplr"], aug["scale"], aug["mosaic"], loss["cls"]) == (0.0, 0.1, 0.5, 0.3)
    loss, aug = train.parse_hyp([os.path.join(ROOT, "cfg", "hyp.txt")])   # the documented file parses
    assert aug["fliplr"] == 0.5 and loss["giou"] == 0.05
    for bad, match in ((["flip=0.5"], "unknown hyperparameter 'flip'"), (["fliplr=2"], "probability"),
                       (["no_such_file.txt"], "neither KEY=VALUE nor an existing hyp file")):
        with pytest.raises(SlimError, match=match):
            train.parse_hyp(bad)


def test_mosaic_keeps_boxes_inside_and_never_mirrors_with_fliplr_0(shapes):
    from yoloslim.darknet.cfg import parse_data_cfg
    hyp = {"mosaic": 1.0, "fliplr": 0.0, "scale": 0.0, "translate": 0.0, "hsv_h": 0, "hsv_s": 0, "hsv_v": 0}
    ds = LoadImagesAndLabels(parse_data_cfg(shapes)["train"], IMG, augment=True, hyp=hyp, nc=5)
    torch.manual_seed(0)
    counts = []
    for i in range(6):
        img, labels, _, _ = ds[i]
        assert img.shape == (3, IMG, IMG)
        xy = labels[:, 2:]
        assert ((xy[:, :2] - xy[:, 2:] / 2) >= -1e-6).all() and ((xy[:, :2] + xy[:, 2:] / 2) <= 1 + 1e-6).all()
        counts.append(len(labels))
    assert sum(counts) > 0


def test_ema_averages_and_resume_keeps_it(shapes, tmp_path):
    from yoloslim.train.ema import ModelEMA
    a = torch.nn.Linear(2, 1)
    ema = ModelEMA(a, decay=0.5, tau=1e-9)
    with torch.no_grad():
        a.weight.add_(2.0)
    before = ema.model.weight.clone()
    ema.update(a)
    assert torch.allclose(ema.model.weight, 0.5 * before + 0.5 * a.weight)
    run = train.train(train_args(shapes, tmp_path / "ema", "--ema", "0.99", "--val-max-images", "4", epochs=1))
    ckpt = load_checkpoint(run["last"])
    assert ckpt["ema_updates"] > 0 and max_state_diff(ckpt["model"], ckpt["train_model"]) > 0


def test_training_flushes_denormals_and_restores_the_setting(shapes, tmp_path):
    """Collapsed gammas drive values into the denormal range, which is many times slower on a CPU."""
    def denormals_flushed():
        return (torch.tensor([1e-40]) * 1.0).item() == 0.0
    seen = []
    assert not denormals_flushed()
    train.train(train_args(shapes, tmp_path / "run", epochs=1),
                on_batch_end=lambda epoch, batch: seen.append(denormals_flushed()))
    assert seen and all(seen)
    assert not denormals_flushed()          # an in-process caller keeps its own setting
