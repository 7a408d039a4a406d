import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CFG_DIR = os.path.join(ROOT, "cfg")

# How long a command a test runs may take before the test calls it hung. It guards against a
# hang, not against slowness: on a loaded machine the quick benchmark alone has taken 15 min,
# and a test must not fail for that (CI's own limit is 90 min).
HANG_LIMIT = 2400


def cfg_path(name):
    return os.path.join(CFG_DIR, f"{name}.cfg")


@pytest.fixture(scope="session")
def coco_tiny():
    """The real COCO yolov3-tiny (cfg, weights, names), fetched once and cached under weights/."""
    from yoloslim.zoo.coco_tiny import fetch_tiny
    return fetch_tiny(os.path.join(ROOT, "weights"))


@pytest.fixture(scope="session")
def darknet():
    """The original (pjreddie) Darknet library, for tests that check files in it.

    Skipped with the reason when it is not installed; under CI=true a missing Darknet is a
    failure, so CI cannot pass without running these tests (.ci/run installs it).
    """
    from yoloslim.deploy.darknet_ref import darknet_missing
    missing = darknet_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    return True


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    on a shared 2-core machine two spin-waiting OpenMP threads are far slower than one."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
