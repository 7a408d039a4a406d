"""Knowledge distillation from an unpruned teacher into a (pruned) student (seed 004, plan A).

A pruned student keeps the teacher's heads: same anchors, classes and grids, so every raw
output has a counterpart and the outputs can be compared element by element:

* objectness and classes are independent sigmoids in YOLOv3, so each is a Bernoulli
  distribution; the loss is the binary KL divergence KL(teacher || student) on logits
  softened by the temperature T (and scaled by T^2 so the gradient size does not depend
  on T, as in Hinton et al.). KL rather than plain BCE against soft targets: the two differ
  by the teacher's entropy, a constant, but KL is exactly 0 when the student matches.
* boxes: L2 between the decoded cell offsets (sigmoid xy) and the raw log-size (wh). Box
  outputs of background cells are meaningless, so box and class terms are weighted by the
  teacher's objectness (the "objectness-scaled" distillation of Mehta & Ozturk, 2018);
  without it the student would spend capacity copying noise.

The result is a per-image mean; train.py multiplies it by ``--kd-weight`` and the batch size
(the same scaling as ``yoloslim.train.loss.compute_loss``) and adds it to the detection loss.
"""
import torch
import torch.nn.functional as F

from yoloslim.errors import SlimError
from yoloslim.train.loss import unwrap


def check_compatible(student, teacher):
    """Raise unless both models have the same heads (anchors, classes), which KD here needs."""
    s_net, t_net = unwrap(student), unwrap(teacher)
    s_heads = [s_net.module_list[i] for i in s_net.yolo_layers]
    t_heads = [t_net.module_list[i] for i in t_net.yolo_layers]
    if len(s_heads) != len(t_heads):
        raise SlimError(f"teacher has {len(t_heads)} YOLO heads, student {len(s_heads)}; distillation needs "
                        f"the same heads (use the unpruned model of the student as --t_cfg)")
    for k, (s, t) in enumerate(zip(s_heads, t_heads)):
        if s.new_coords != t.new_coords:
            raise SlimError(f"head {k}: teacher (new_coords={t.new_coords}) and student (new_coords={s.new_coords}) "
                            f"decode boxes differently; distillation needs the same heads")
        if s.nc != t.nc or s.anchors.shape != t.anchors.shape or not torch.allclose(s.anchors, t.anchors):
            raise SlimError(f"head {k}: teacher ({t.nc} classes, anchors {t.anchors.tolist()}) and student "
                            f"({s.nc} classes, anchors {s.anchors.tolist()}) differ; distillation needs the "
                            f"same classes and anchors")


def head_logits(model, p):
    """Per-head (B, na, ny, nx, 5+nc) raw outputs as logits, whatever the heads' decoding."""
    net = unwrap(model)
    return [net.module_list[i].logits(t) for i, t in zip(net.yolo_layers, p)]


@torch.no_grad()
def teacher_outputs(teacher, imgs):
    """The teacher's heads (B, na, ny, nx, 5+nc) as logits, without the decoding eval mode adds."""
    net = unwrap(teacher)
    heads = [net.module_list[i] for i in net.yolo_layers]
    return head_logits(net, [h.reshape(r) for h, r in zip(heads, net.forward_raw(imgs))])


def binary_kl_with_logits(student_logits, teacher_logits, T):
    """Elementwise KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))), computed from logits stably."""
    target = torch.sigmoid(teacher_logits / T)
    cross = F.binary_cross_entropy_with_logits(student_logits / T, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits / T, target, reduction="none")
    return (cross - entropy).clamp(min=0)  # float rounding can dip just below 0


def _weighted_mean(values, weights):
    return (values * weights).sum() / weights.sum().clamp(min=1e-6)


def distillation_loss(student_p, teacher_p, T=2.0, box_weight=1.0, obj_weight=1.0, cls_weight=1.0):
    """KD loss (scalar, per-image mean summed over heads) of the student's heads against the teacher's.

    ``student_p`` / ``teacher_p``: lists of (B, na, ny, nx, 5+nc) logits with equal shapes (raw outputs
    through ``head_logits``).
    """
    if len(student_p) != len(teacher_p):
        raise SlimError(f"distillation: student has {len(student_p)} heads, teacher {len(teacher_p)}")
    total = student_p[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_p, teacher_p):
        if s.shape != t.shape:
            raise SlimError(f"distillation: head shapes differ (student {tuple(s.shape)}, teacher "
                            f"{tuple(t.shape)}); teacher and student need the same anchors, classes and input size")
        s, t = s.float(), t.detach().float()
        weight = torch.sigmoid(t[..., 4:5])                          # teacher's objectness
        box = torch.cat((torch.sigmoid(s[..., :2]) - torch.sigmoid(t[..., :2]), s[..., 2:4] - t[..., 2:4]), -1)
        l_box = _weighted_mean(box.pow(2).sum(-1, keepdim=True), weight)
        l_obj = binary_kl_with_logits(s[..., 4], t[..., 4], T).mean() * T * T
        l_cls = s.new_zeros(())
        if s.shape[-1] > 5:
            kl = binary_kl_with_logits(s[..., 5:], t[..., 5:], T).mean(-1, keepdim=True)
            l_cls = _weighted_mean(kl, weight) * T * T
        total = total + box_weight * l_box + obj_weight * l_obj + cls_weight * l_cls
    return total
