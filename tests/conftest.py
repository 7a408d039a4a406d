import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CFG_DIR = os.path.join(ROOT, "cfg")


def cfg_path(name):
    return os.path.join(CFG_DIR, f"{name}.cfg")


@pytest.fixture(scope="session")
def coco_tiny():
    """The real COCO yolov3-tiny (cfg, weights, names), fetched once and cached under weights/."""
    from scripts.fetch_tiny import fetch_tiny
    return fetch_tiny(os.path.join(ROOT, "weights"))
