"""Regular prune: normal prune with kept channel counts snapped to 2^n or to a multiple of N.

Hardware runs convolutions fastest on regular widths; an odd count like 23 wastes lanes.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
from yoloslim.errors import cli_main
from yoloslim.cli.checks import count
from yoloslim.cli.prune import base_parser, run_prune
from yoloslim.prune.engine import POLICIES, Multiple, Policy


def main(argv=None):
    p = base_parser(__doc__)
    p.add_argument("--multiple", type=count, default=0,
                   help="round kept counts up to a multiple of this (e.g. 8); 0 = round up to a power of two")
    args = p.parse_args(argv)
    if args.multiple:
        policy = Policy(f"regular-x{args.multiple}", rounding=Multiple(args.multiple))
    else:
        policy = POLICIES["regular-pow2"]
    return run_prune(args, policy, policy.name)


if __name__ == "__main__":
    cli_main(main)
