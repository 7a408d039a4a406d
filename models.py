"""The PyTorch model of a Darknet cfg, and its weights: the names the seeds and users import.

The code lives in the library (``yoloslim/darknet``): ``model.py`` builds the network from
``module_defs``, ``weights.py`` reads and writes ``.weights`` and checkpoints, ``load.py`` is
the one way to get a model from a cfg and/or weights.
"""
from yoloslim.darknet.load import load_any, load_model, load_weights, model_from_checkpoint
from yoloslim.darknet.model import Darknet, create_modules
from yoloslim.darknet.weights import (DEFAULT_VERSION, check_finite_state, load_checkpoint,
                                      read_weights_file, save_checkpoint)

__all__ = ["Darknet", "create_modules", "load_any", "load_model", "load_weights", "model_from_checkpoint",
           "DEFAULT_VERSION", "check_finite_state", "load_checkpoint", "read_weights_file", "save_checkpoint"]
