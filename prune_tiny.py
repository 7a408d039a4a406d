"""Prune yolov3-tiny / yolov4-tiny: every conv but the heads, through maxpools and grouped routes.

A layer read by a grouped route (yolov4-tiny's ``groups=2 group_id=1``) keeps the same
number of channels in each half, so the route still reads the half it was trained on.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
from yoloslim.errors import PruneError, cli_main
from yoloslim.cli.prune import base_parser, run_prune
from yoloslim.prune.graph import analyze
from yoloslim.darknet.cfg import parse_model_cfg


def main(argv=None):
    args = base_parser(__doc__).parse_args(argv)
    if analyze(parse_model_cfg(args.cfg)[1:]).shortcut_groups():
        raise PruneError(f"{args.cfg}: has residual shortcuts, so it is not a tiny model; "
                         f"use normal_prune.py or shortcut_prune.py")
    return run_prune(args, "tiny", "tiny")


if __name__ == "__main__":
    cli_main(main)
