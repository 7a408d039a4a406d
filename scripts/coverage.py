"""Coverage of Darknet's cfg folders: which cfgs build, agree with OpenCV and pjreddie Darknet, and prune.

    python scripts/coverage.py --darknet-git DIR [--debian /usr/share/darknet/cfg] [--readme cfg/README.md]

``DIR`` is the git directory of an AlexeyAB/darknet clone (a bare one will do); every .cfg in its
``cfg/`` folder at HEAD, then every .cfg in the Debian folder, goes through
``yoloslim.pipeline.coverage.check_cfg`` (random weights, a small input), and the tables replace the
coverage block of the README. Took 12 minutes on a shared 2-core machine.
"""
import os
import time

import torch

from yoloslim.cli.checks import Parser
from yoloslim.pipeline.coverage import cfgs_in_folder, cfgs_in_git, check_cfg, counts, markdown_table, replace_block
from yoloslim.errors import SlimError, cli_main
from yoloslim.io import atomic_write

DEBIAN = "/usr/share/darknet/cfg"


def section(title, cfgs, pjreddie):
    rows = []
    for name, text in cfgs:
        start = time.time()
        rows.append(check_cfg(name, text, pjreddie))
        print(f"{name}: {'builds' if rows[-1].builds else 'refused'} ({time.time() - start:.0f} s)", flush=True)
    return f"### {title}\n\n{counts(rows)}\n\n{markdown_table(rows)}\n", rows


def main(argv=None):
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--darknet-git", required=True, help="git directory of an AlexeyAB/darknet clone")
    p.add_argument("--debian", default=DEBIAN, help="Debian's darknet cfg folder ('' to leave it out)")
    p.add_argument("--readme", default=os.path.join("cfg", "README.md"), help="the file whose coverage block is replaced")
    p.add_argument("--no-pjreddie", action="store_true", help="skip the pjreddie Darknet comparison")
    args = p.parse_args(argv)
    if not os.path.isfile(args.readme):
        raise SlimError(f"--readme {args.readme}: not found; run from the repository root or name cfg/README.md")
    torch.set_num_threads(1)
    commit, alexeyab = cfgs_in_git(args.darknet_git)
    parts = [section(f"AlexeyAB/darknet `cfg/` @{commit[:12]}", alexeyab, not args.no_pjreddie)[0]]
    if args.debian:
        if not os.path.isdir(args.debian):
            raise SlimError(f"--debian {args.debian}: not a folder; install Debian's darknet or pass --debian ''")
        parts.append(section(f"Debian `darknet` package, `{args.debian}`", cfgs_in_folder(args.debian),
                             not args.no_pjreddie)[0])
    with open(args.readme, encoding="utf-8") as f:
        text = f.read()
    with atomic_write(args.readme, "w") as f:
        f.write(replace_block(text, "\n".join(parts)))
    print(f"wrote the coverage block of {args.readme}")


if __name__ == "__main__":
    cli_main(main)
