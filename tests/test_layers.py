"""The layer-kind table: every kind against OpenCV, pruned and compensated; refused options by name."""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from yoloslim.darknet.model import Darknet
from test_prune import check_written_pair, relative_difference
from yoloslim.errors import CfgError, PruneError
from yoloslim.darknet.kinds import Reorg, decode_boxes, layer_strides
from yoloslim.deploy.opencv_dnn import (max_difference_from_opencv, max_layout_difference, opencv_forward, read_net,
                              torch_in_opencv_layout)
from yoloslim.darknet.cfg import cfg_to_text, parse_cfg_text, parse_model_cfg
from yoloslim.prune.graph import analyze
from yoloslim.prune.engine import POLICIES, build_compact, plan_channels, plan_layers, prune, zeroed_reference
from yoloslim.deploy.measure import count_flops, opencv_latency_ms, randomize_weights, torch_latency_ms
from conftest import HANG_LIMIT, ROOT

SIZE = 64


def net(channels=3):
    return f"[net]\nwidth={SIZE}\nheight={SIZE}\nchannels={channels}\n"


def conv(filters, size=3, stride=1, act="leaky", bn=1, extra=""):
    return (f"[convolutional]\nbatch_normalize={bn}\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
            f"activation={act}\n{extra}")


def head(nc=2, act="linear", extra=""):
    return (f"[convolutional]\nfilters={3 * (5 + nc)}\nsize=1\nactivation={act}\n"
            f"[yolo]\nmask=0,1,2\nanchors=4,6, 10,12, 20,18\nclasses={nc}\nnum=3\n{extra}")


def region(nc=2, extra=""):
    """A YOLOv2 head; thresh=0 so OpenCV reports every class score (it zeroes those under thresh)."""
    return (f"[convolutional]\nfilters={3 * (5 + nc)}\nsize=1\nactivation=linear\n"
            f"[region]\nanchors=0.6,0.8, 1.5,2.0, 3.2,2.4\nclasses={nc}\nnum=3\ncoords=4\nsoftmax=1\nthresh=0\n{extra}")


STEM = conv(8) + conv(16, stride=2)


def block(filters):
    return conv(filters // 2, size=1) + conv(filters) + "[shortcut]\nfrom=-3\nactivation=linear\n"


KINDS = {
    # Darknet adds a shortcut of another width over the common channels; output = previous layer's width
    "shortcut-narrower-from": net() + STEM + conv(8) + conv(16) + "[shortcut]\nfrom=-2\nactivation=linear\n" + head(),
    "shortcut-wider-from": net() + STEM + conv(8, size=1) + "[shortcut]\nfrom=-2\nactivation=leaky\n" + head(),
    "new-coords": net() + STEM + conv(16) + head(act="logistic", extra="new_coords=1\nscale_x_y=2.0\n"),
    "avgpool": net() + STEM + "[avgpool]\n" + conv(8, size=1) + head(),
    "scale-channels": net() + STEM + "[avgpool]\n" + conv(4, size=1, act="relu", bn=0)
    + conv(16, size=1, act="logistic", bn=0) + "[scale_channels]\nfrom=-4\nactivation=mish\n" + conv(8) + head(),
    "sam": net() + STEM + conv(16, size=1, act="logistic") + "[sam]\nfrom=-2\nactivation=leaky\n" + conv(8) + head(),
    "reorg": net() + STEM + "[reorg]\nstride=2\n" + conv(8) + head(),
    # the shortcut policy prunes the residual stream through [avgpool]; [reorg] freezes its stream
    "residual-avgpool": net() + STEM + block(16) + block(16) + "[avgpool]\n" + conv(8, size=1) + head(),
    "residual-reorg": net() + STEM + block(16) + "[reorg]\nstride=2\n" + conv(8) + head(),
    "region": net() + STEM + conv(16) + region(nc=3),
    # yolov2's passthrough: a 1x1 conv of a finer layer, reorganised to the coarse grid and concatenated
    "region-reorg": net() + STEM + conv(8) + "[maxpool]\nsize=2\nstride=2\n" + conv(16) + "[route]\nlayers=-3\n"
    + conv(4, size=1) + "[reorg]\nstride=2\n" + "[route]\nlayers=-1,-4\n" + conv(16) + region(),
    "maxpool-stride1-route-groups": net() + STEM + "[maxpool]\nsize=3\nstride=1\n"
    + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n" + conv(8) + "[route]\nlayers=-1,-3\n" + conv(8) + head(),
}
KINDS.update({f"activation-{a}": net() + conv(8, act=a) + conv(16, stride=2, act=a) + conv(8, act=a) + head()
              for a in ("mish", "swish", "logistic", "relu", "leaky", "tanh", "linear")})


def write_pair(tmp_path, text, seed=1):
    cfg = tmp_path / "m.cfg"
    cfg.write_text(text)
    model = randomize_weights(Darknet(str(cfg)), seed=seed).eval()
    weights = tmp_path / "m.weights"
    model.save_darknet_weights(weights)
    return model, str(cfg), str(weights)


def opencv_difference(model, cfg, weights, seed=0):
    x = np.random.default_rng(seed).random((1, model.in_channels, SIZE, SIZE), dtype=np.float32)
    theirs = opencv_forward(read_net(cfg, weights, exact=True), x)
    return max_layout_difference(torch_in_opencv_layout(model, x), theirs)


def check_prunes_exactly(model, tmp_path, policies=("normal", "shortcut")):
    """Each policy prunes something, the compact model equals the original with the pruned
    gammas zeroed, and the written pair reads back (OpenCV) with the compact model's outputs."""
    graph = analyze(model.module_defs, model.in_channels)
    for name in policies:
        plan = plan_channels(model, graph, POLICIES[name], 0.5, layer_keep=0.1)
        assert plan.pruned_channels() > 0
        compact = build_compact(model, plan, graph)
        assert relative_difference(compact, zeroed_reference(model, plan), size=SIZE) < 1e-6
        check_written_pair(compact, tmp_path, size=SIZE)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kind_matches_opencv_exports_and_prunes_exactly(name, tmp_path):
    from yoloslim.deploy.onnx_export import export_onnx, onnx_max_difference
    model, cfg, weights = write_pair(tmp_path, KINDS[name])
    assert opencv_difference(model, cfg, weights) <= 1e-4
    export_onnx(model, tmp_path / "m.onnx", SIZE)
    assert onnx_max_difference(model, tmp_path / "m.onnx", SIZE) < 1e-4
    check_prunes_exactly(model, tmp_path)


def test_reorg_is_not_a_plain_space_to_depth():
    """OpenCV's (and Darknet's) reorg is its own permutation: the parity test above could not
    tell them apart if the two were equal on a random input."""
    x = torch.rand(1, 8, 4, 4)
    ours = Reorg(2)(x)
    assert ours.shape == (1, 32, 2, 2)
    assert not torch.allclose(ours, torch.nn.functional.pixel_unshuffle(x, 2))
    assert torch.equal(ours.flatten().sort().values, x.flatten().sort().values)   # a permutation


def test_residual_stream_prunes_through_avgpool_but_not_into_reorg():
    for name, prunable in (("residual-avgpool", True), ("residual-reorg", False)):
        model = randomize_weights(Darknet(parse_cfg_text(KINDS[name])))
        graph = analyze(model.module_defs)
        (stream,) = graph.shortcut_groups()
        assert (stream[0] in graph.prunable) == prunable
        if prunable:
            with torch.no_grad():       # a sparsity-trained stream: half its channels near zero
                for c in stream:
                    model.module_list[c].BatchNorm2d.weight[::2] = 1e-3
            plan = plan_channels(model, graph, POLICIES["shortcut"], 0.5, layer_keep=0.1)
            assert not plan.masks[stream[0]].all()
            compact = build_compact(model, plan, graph)
            assert relative_difference(compact, zeroed_reference(model, plan), size=SIZE) < 1e-6


def test_frozen_kinds_keep_their_inputs_whole(tmp_path):
    """[sam] and differing-width shortcuts cannot be pruned through: the graph freezes their inputs."""
    for name, readers in (("sam", ("sam",)), ("shortcut-narrower-from", ("shortcut",))):
        defs = parse_cfg_text(KINDS[name])[1:]
        graph = analyze(defs)
        for i, d in enumerate(defs):
            if d["type"] in readers:
                assert not set(graph.sources[i]) & set(graph.prunable)


def test_new_coords_decoding_formula():
    t = torch.tensor([[0.5, 0.75, 0.5, 0.25]])
    anchors = torch.tensor([[10.0, 20.0]])
    xy, wh = decode_boxes(t, anchors, 2.0, new_coords=1)
    assert torch.allclose(xy, torch.tensor([[0.5, 1.0]]))            # sig*2 - 0.5
    assert torch.allclose(wh, torch.tensor([[10.0, 20.0 * 0.25]]))   # (2*sig)^2 * anchor
    xy, wh = decode_boxes(torch.zeros(1, 4), anchors, 1.0, new_coords=0)
    assert torch.allclose(xy, torch.full((1, 2), 0.5)) and torch.allclose(wh, anchors)


def test_new_coords_loss_is_finite_and_trains_scores():
    from yoloslim.train.loss import compute_loss
    model = randomize_weights(Darknet(parse_cfg_text(KINDS["new-coords"]))).train()
    p = model(torch.rand(2, 3, SIZE, SIZE))
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3], [1, 0, 0.3, 0.6, 0.1, 0.1]])
    loss, items = compute_loss(p, targets, model)
    loss.backward()
    assert torch.isfinite(items).all() and items[1] > 0 and items[2] > 0


def test_distillation_compares_new_coords_heads_as_logits():
    """new_coords heads output probabilities; distillation turns them back into logits, so the
    loss is zero for a student equal to its teacher, positive otherwise, and finite."""
    from yoloslim.train.distill import check_compatible, distillation_loss, head_logits, teacher_outputs
    teacher = randomize_weights(Darknet(parse_cfg_text(KINDS["new-coords"]))).eval()
    student = copy.deepcopy(teacher).train()
    for m in student.modules():   # training-mode outputs, but BN on the teacher's statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    check_compatible(student, teacher)
    x = torch.rand(2, 3, SIZE, SIZE)
    same = distillation_loss(head_logits(student, student(x)), teacher_outputs(teacher, x))
    assert float(same.detach()) < 1e-6
    with torch.no_grad():
        for prm in student.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    loss = distillation_loss(head_logits(student, student(x)), teacher_outputs(teacher, x))
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 1e-4
    assert all(torch.isfinite(prm.grad).all() for prm in student.parameters() if prm.grad is not None)


def test_yolo_scale_x_y_does_not_change_the_stride():
    defs = parse_cfg_text(net() + STEM + head(extra="scale_x_y=1.05\n"))[1:]
    strides = layer_strides(defs)
    assert strides[-1] == strides[-2] == 2.0


# ------------------------------------------------------------------ refused options, one line each

REFUSED = [
    (conv(8, extra="dilation=2\n"), "dilation=2"),
    (conv(8, extra="stride_x=2\n"), "stride_x=2"),
    (conv(8, extra="stride_y=2\n"), "stride_y=2"),
    (conv(8, extra="antialiasing=1\n"), "antialiasing=1"),
    (conv(8, extra="xnor=1\n"), "xnor=1"),
    (conv(8, extra="binary=1\n"), "binary=1"),
    (conv(8, act="relu6"), "activation=relu6"),
    (conv(8) + "[maxpool]\nsize=2\nstride=2\nstride_x=1\n", "stride_x=1"),
    (conv(8) + "[maxpool]\nsize=2\nstride=2\nmaxpool_depth=1\n", "maxpool_depth=1"),
    (conv(8) + "[upsample]\nstride=2\nscale=2\n", "scale=2"),
    (conv(8) + conv(8) + "[shortcut]\nfrom=-2\nweights_type=per_channel\n", "weights_type=per_channel"),
    (conv(8) + "[avgpool]\n" + conv(8, size=1) + "[scale_channels]\nfrom=-3\nscale_wh=1\n", "scale_wh=1"),
    (conv(8) + "[reorg]\nstride=2\nreverse=1\n", "reverse=1"),
    (conv(8) + "[route]\nlayers=-1\nactivation=leaky\n", "activation=leaky"),
    (conv(8) + "[local]\nfilters=8\n", "[local]"),
    (conv(8) + "[maxpool]\nstride=2\n", "size="),           # Darknet: size=stride, OpenCV: size=2
    (conv(8) + "[upsample]\n", "stride="),                   # Darknet: 2, OpenCV: 1
    (conv(8) + "[reorg]\n", "stride="),                      # Darknet: 1, OpenCV: 2
    ("[convolutional]\nfilters=8\nsize=3\n", "activation="),  # Darknet: logistic, OpenCV: linear
    (conv(8) + "[convolutional]\nfilters=21\nsize=1\nactivation=linear\n[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nnum=3\n",
     "classes="),                                           # Darknet: 20, OpenCV: none
    (conv(8) + region(extra="tree=data/9k.tree\n"), "tree=data/9k.tree"),        # yolo9000's hierarchical softmax
    (conv(8) + region(extra="map=data/coco9k.map\n"), "map=data/coco9k.map"),
    (conv(8) + region(extra="log=1\n"), "log=1"),
    (conv(8) + region(extra="background=1\n"), "background=1"),
    (conv(8) + region(extra="mask=0,1\n"), "mask=0,1"),
    (conv(8) + region().replace("coords=4", "coords=5"), "coords=5"),
    (conv(8) + region().replace("softmax=1", "softmax=0"), "softmax=0"),   # Darknet: logistic classes, OpenCV: none
    (conv(8) + region().replace("softmax=1\n", ""), "softmax="),          # Darknet's default 0, OpenCV's none
    (conv(8) + region().replace("num=3\n", ""), "num=3"),                 # Darknet's default 1
    (conv(8) + region().replace("num=3", "num=2"), "num=2"),
]


@pytest.mark.parametrize("body,needle", REFUSED, ids=[n for _, n in REFUSED])
def test_refused_option_named_at_parse_time(tmp_path, body, needle):
    path = tmp_path / "bad.cfg"
    path.write_text(net() + body + head())
    with pytest.raises(CfgError) as e:
        parse_model_cfg(str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and needle in msg


# The sections and options that alone kept one AlexeyAB cfg each from building (issue 21's coverage
# run: darknet53_448_xnor, Gaussian_yolov3_BDD, crnn.train, yolov4-sam-mish-csp-reorg-bfm,
# yolov4-tiny_contrastive, resnet152_trident): refused by name at parse time, and by the CLIs with
# one error line and exit 2.
ONE_CFG_BLOCKERS = [
    (conv(8, extra="xnor=1\n"), "xnor=1"),
    (conv(8) + "[gaussian_yolo]\nmask=0,1,2\nanchors=4,6, 10,12, 20,18\nclasses=2\nnum=3\n", "[gaussian_yolo]"),
    (conv(8) + "[crnn]\nbatch_normalize=1\nsize=3\npad=1\noutput=8\nhidden=8\nactivation=leaky\n", "[crnn]"),
    (conv(8) + "[reorg3d]\nstride=2\n", "[reorg3d]"),
    (conv(8) + "[contrastive]\nclasses=2\n", "[contrastive]"),
    (conv(8) + "[local_avgpool]\nsize=2\nstride=2\n", "[local_avgpool]"),
    (conv(8, extra="dilation=2\n"), "dilation=2"),
    (conv(8) + conv(8, extra="share_index=-2\n"), "share_index=-2"),
]


@pytest.mark.parametrize("body,needle", ONE_CFG_BLOCKERS, ids=[n for _, n in ONE_CFG_BLOCKERS])
def test_one_cfg_blocker_refused_by_name(tmp_path, body, needle):
    path = tmp_path / "bad.cfg"
    path.write_text(net() + body + head())
    with pytest.raises(CfgError) as e:
        parse_model_cfg(str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("body,needle", [ONE_CFG_BLOCKERS[1], ONE_CFG_BLOCKERS[7]], ids=["section", "option"])
def test_one_cfg_blocker_refused_by_the_cli(tmp_path, body, needle):
    """The CLIs' path for any parse-time refusal (cli_main): a section and an option, one subprocess each."""
    path = tmp_path / "bad.cfg"
    path.write_text(net() + body + head())
    (tmp_path / "w.weights").write_bytes(bytes(20))          # a header and no floats: the cfg fails first
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), "--cfg", str(path), "--weights",
                           str(tmp_path / "w.weights"), "--out", str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=HANG_LIMIT, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.cfg", "w.weights"]


def test_new_coords_other_values_refused():
    with pytest.raises(CfgError, match="new_coords=2"):
        parse_cfg_text(net() + STEM + head(extra="new_coords=2\n"))


def test_repeated_key_keeps_the_first_value_like_darknet():
    defs = parse_cfg_text(net() + "[convolutional]\nfilters=8\nfilters=16\nsize=3\nactivation=leaky\n" + head())
    assert defs[1]["filters"] == 8
    assert Darknet(defs).module_list[0].Conv2d.out_channels == 8
    assert cfg_to_text(defs).count("filters=") == 2   # the written cfg is unambiguous: one per section


# ------------------------------------------------------------------ graph bugs

def test_grouped_conv_after_concatenation_is_frozen_not_mispruned(tmp_path):
    text = (net() + STEM + conv(8) + "[route]\nlayers=-1,-2\n"
            + conv(24, extra="groups=24\n") + conv(8) + head())
    model, _, _ = write_pair(tmp_path, text)
    graph = analyze(model.module_defs)
    route = next(i for i, d in enumerate(model.module_defs) if d["type"] == "route")
    assert not set(graph.sources[route]) & set(graph.prunable)
    check_prunes_exactly(model, tmp_path, policies=("normal",))


def test_block_whose_inner_conv_is_routed_is_not_removable(tmp_path):
    # block A (layers 2-4), block B (5-7); the route reads B's first conv (layer 5)
    text = (net() + STEM + block(16) + block(16) + "[route]\nlayers=-3\n" + conv(8) + "[route]\nlayers=-3,-1\n"
            + conv(16) + head())
    model, _, _ = write_pair(tmp_path, text)
    graph = analyze(model.module_defs)
    assert [b.shortcut for b in graph.blocks] == [4]
    plan = plan_layers(model, graph, 1)
    compact = build_compact(model, plan, graph)
    assert relative_difference(compact, zeroed_reference(model, plan), size=SIZE) < 1e-6
    check_written_pair(compact, tmp_path, size=SIZE)
    with pytest.raises(PruneError, match="choose between 1 and 1"):
        plan_layers(model, graph, 2)


def test_block_feeding_a_multiplication_is_not_removable(tmp_path):
    """Removing a block leaves a constant in its stream; a [sam] cannot carry it exactly."""
    text = net() + STEM + block(16) + conv(16, size=1, act="logistic") + "[sam]\nfrom=-2\n" + conv(8) + head()
    graph = analyze(parse_cfg_text(text)[1:])
    assert graph.blocks == []
    assert [b.shortcut for b in analyze(parse_cfg_text(net() + STEM + block(16) + conv(8) + head())[1:]).blocks] == [4]


def test_one_input_channel_through_flops_latency_export_opencv_and_pruning(tmp_path):
    from yoloslim.deploy.onnx_export import export_onnx, onnx_max_difference
    model, cfg, weights = write_pair(tmp_path, net(channels=1) + STEM + conv(8) + head())
    assert model.module_list[0].Conv2d.in_channels == 1
    assert count_flops(model) == count_flops(model, (SIZE, SIZE)) > 0
    assert torch_latency_ms(model, SIZE, warmup=0, runs=1) > 0
    assert opencv_latency_ms(read_net(cfg, weights), SIZE, warmup=0, runs=1, channels=1) > 0
    assert max_difference_from_opencv(model, cfg, weights, SIZE) <= 1e-4
    onnx = tmp_path / "m.onnx"
    export_onnx(model, onnx, SIZE)
    assert onnx_max_difference(model, onnx, SIZE) < 1e-4
    assert opencv_difference(model, cfg, weights) <= 1e-4
    compact, _ = prune(model, POLICIES["normal"], percent=0.5, layer_keep=0.1)
    check_written_pair(compact, tmp_path, size=SIZE)


# ------------------------------------------------------------------ as a user runs it

def run_script(*args):
    import subprocess
    import sys
    root = __file__.rsplit("/tests/", 1)[0]
    return subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=HANG_LIMIT)


def test_prune_and_export_scripts_on_a_one_channel_model_with_new_kinds(tmp_path):
    text = (net(channels=1) + STEM + "[avgpool]\n" + conv(4, size=1, act="relu", bn=0)
            + conv(16, size=1, act="logistic", bn=0) + "[scale_channels]\nfrom=-4\n" + conv(8)
            + head(act="logistic", extra="new_coords=1\nscale_x_y=2.0\n"))
    _, cfg, weights = write_pair(tmp_path, text)
    out = tmp_path / "out"
    r = run_script("normal_prune.py", "--cfg", cfg, "--weights", weights, "--percent", "0.5", "--layer-keep", "0.1",
                   "--img-size", str(SIZE), "--latency-runs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    pruned_cfg, pruned_weights = str(out / "m-normal.cfg"), str(out / "m-normal.weights")
    assert Darknet(pruned_cfg).in_channels == 1
    r = run_script("export.py", "--cfg", pruned_cfg, "--weights", pruned_weights, "--out", str(tmp_path / "p.onnx"),
                   "--img-size", str(SIZE))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.onnx").stat().st_size > 0


def test_refused_option_through_a_script_is_one_error_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(net() + conv(8, extra="dilation=2\n") + head())
    (tmp_path / "some.weights").write_bytes(bytes(64))  # exists, so the cfg is what gets refused
    r = run_script("export.py", "--cfg", str(cfg), "--weights", str(tmp_path / "some.weights"),
                   "--out", str(tmp_path / "x.onnx"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:") and "dilation=2" in r.stderr
