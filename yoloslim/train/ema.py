"""Exponential moving average of a model's weights, the weights that are evaluated and saved."""
import copy
import math

import torch


class ModelEMA:
    """ema = d * ema + (1 - d) * weights after every step, d ramping up as decay * (1 - exp(-updates / tau)).

    The ramp keeps the first steps' average from being dominated by the starting weights; BN
    running statistics are averaged the same way.
    """

    def __init__(self, model, decay=0.999, tau=200, updates=0):
        self.model = copy.deepcopy(model).eval()
        for prm in self.model.parameters():
            prm.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def decay_now(self):
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay_now()
        source = model.state_dict()
        for key, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[key].detach(), alpha=1 - d)
            else:
                value.copy_(source[key])
