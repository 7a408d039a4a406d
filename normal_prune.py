"""Normal prune: global |gamma| threshold; layers that meet at shortcuts keep all channels."""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
from yoloslim.errors import cli_main
from yoloslim.cli.prune import base_parser, run_prune


def main(argv=None):
    p = base_parser(__doc__)
    p.add_argument("--importance", choices=["bn", "l1"], default="bn",
                   help="bn: BN |gamma| with one global threshold; l1: filter L1 norm, the same percent in each layer")
    args = p.parse_args(argv)
    return run_prune(args, "normal" if args.importance == "bn" else "l1", "normal" if args.importance == "bn" else "l1")


if __name__ == "__main__":
    cli_main(main)
