"""Layer + channel prune: remove the N weakest residual blocks, then prune channels.

Blocks are ranked by the mean |gamma| of their last BN: when it is near zero the block
adds only a constant to the stream, which is folded into the layers that read it.
Channels are then pruned as shortcut_prune does (set --percent 0 to remove layers only).
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
from yoloslim.errors import cli_main
from yoloslim.cli.checks import count
from yoloslim.cli.prune import base_parser, run_prune


def main(argv=None):
    p = base_parser(__doc__, percent_default=0.5)
    p.add_argument("--layers", type=count, default=4, help="residual blocks to remove")
    args = p.parse_args(argv)
    return run_prune(args, "shortcut", f"layer{args.layers}-channel", n_blocks=args.layers, channels=args.percent != 0)


if __name__ == "__main__":
    cli_main(main)
