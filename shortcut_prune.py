"""Shortcut (extreme) prune: every conv, including those meeting at residual shortcuts.

The convs that add into one residual stream share one mask: a channel of the stream is
kept if any of them still needs it (the union of their |gamma| masks), so no residual
sum ever loses a channel that one branch relies on.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
from yoloslim.errors import cli_main
from yoloslim.cli.prune import base_parser, run_prune


def main(argv=None):
    args = base_parser(__doc__, percent_default=0.8).parse_args(argv)
    return run_prune(args, "shortcut", "shortcut", needs_shortcuts=True)


if __name__ == "__main__":
    cli_main(main)
