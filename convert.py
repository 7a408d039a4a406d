"""Convert model weights between Darknet ``.weights`` and our PyTorch ``.pt`` checkpoints.

The direction follows the file extensions:

    python convert.py --cfg cfg/yolov3-tiny.cfg --weights yolov3-tiny.weights --out yolov3-tiny.pt
    python convert.py --cfg cfg/yolov3-tiny.cfg --weights yolov3-tiny.pt --out back.weights
    python convert.py --weights yolov3-tiny.pt --out back.weights          # cfg travels inside our .pt
    python convert.py --cfg cfg/yolov3.cfg --weights yolov3.weights --out darknet53.conv.74 --cutoff 74

The input is recognised by its content (a checkpoint of ours under any name, or a Darknet
weights file); the output format follows the --out name: ``.pt``/``.pth``/``.ckpt`` write our
checkpoint, any other name a Darknet weights file (backbone files such as ``darknet53.conv.74``
have no ``.weights`` extension). Outputs are written atomically and never over an input.

``--reader`` names the program that will run a written .weights (its BN arithmetic; default
opencv), ``--input-reader`` the one an input .weights was written for (default: its header);
see yoloslim/darknet/bn_readers.py.
"""
if __name__ == "__main__":   # first, before torch loads: a Ctrl-C while importing is one line, exit 130
    from yoloslim.interrupt import exit_quietly_on_ctrl_c
    exit_quietly_on_ctrl_c()
import os

from yoloslim.darknet.load import load_any
from yoloslim.darknet.weights import save_checkpoint
from yoloslim.cli import checks
from yoloslim.darknet.bn_readers import DEFAULT_READER, INPUT_READER_HELP, READER_HELP, READERS
from yoloslim.errors import SlimError, cli_main
from yoloslim.io import is_torch_file, refuse_overwrite

CHECKPOINT_EXTS = (".pt", ".pth", ".ckpt")


def is_checkpoint(path):
    """For outputs (which do not exist yet): the name decides the format."""
    return os.fspath(path).lower().endswith(CHECKPOINT_EXTS)


def build_model(cfg, weights, cutoff=None, input_reader=None):
    """The model the input describes: from --cfg when given, else from the cfg inside our checkpoint."""
    if cfg:
        checks.check_cfg(cfg)
    return load_any(cfg, weights, cutoff=cutoff, reader=input_reader)


def refuse_foreign_file(out):
    """An existing --out is replaced only when it is weights or a checkpoint: a user's .data, image or
    list file given by mistake must never become a .weights file."""
    from yoloslim.darknet.weights import read_weights_file
    if not os.path.isfile(out) or is_torch_file(out):
        return
    try:
        read_weights_file(out)
    except SlimError:
        raise SlimError(f"--out {out}: exists and is not a weights file or checkpoint; choose a new name") from None


def convert(cfg, weights, out, cutoff=None, reader=DEFAULT_READER, input_reader=None):
    """Read ``weights`` (with ``cfg``) and write ``out`` in the format its extension names."""
    if not os.path.isfile(weights):
        raise SlimError(f"{weights}: input weights file not found; check --weights")
    refuse_overwrite(out, weights, cfg)
    refuse_foreign_file(out)
    if cutoff is not None and cutoff <= 0:
        raise SlimError(f"--cutoff {cutoff}: must be a positive layer count")
    model = build_model(cfg, weights, cutoff, input_reader)
    if cutoff is not None and cutoff > len(model.module_defs):
        raise SlimError(f"--cutoff {cutoff}: the cfg has only {len(model.module_defs)} layers")
    if is_checkpoint(out):
        # the whole model goes into a .pt; a cutoff only limited what was read from a backbone file
        extra = {"cutoff": cutoff} if cutoff is not None and not is_torch_file(weights) else {}
        save_checkpoint(model.checkpoint(**extra), out)
    else:
        model.save_darknet_weights(out, cutoff, reader)
    return model


def parse_args(argv=None):
    p = checks.parser("Convert between Darknet .weights and our PyTorch checkpoints.", prog="convert.py",
                      show_defaults=False)
    p.add_argument("--cfg", default=None, type=checks.input_file,
                   help="Darknet .cfg of the model (optional for our checkpoints, which carry it)")
    p.add_argument("--weights", required=True, type=checks.input_file,
                   help="input: Darknet weights or our checkpoint (recognised by content)")
    p.add_argument("--out", required=True, type=checks.output_file,
                   help="output: .pt/.pth/.ckpt for a checkpoint, anything else for Darknet weights")
    p.add_argument("--cutoff", type=checks.positive_int, default=None,
                   help="only the layers before this index (backbone files such as darknet53.conv.74)")
    p.add_argument("--reader", choices=list(READERS), default=DEFAULT_READER,
                   help=READER_HELP + f" (default: {DEFAULT_READER})")
    p.add_argument("--input-reader", choices=["auto", *READERS], default="auto", help=INPUT_READER_HELP)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = convert(args.cfg, args.weights, args.out, args.cutoff, args.reader,
                    None if args.input_reader == "auto" else args.input_reader)
    kind = "checkpoint" if is_checkpoint(args.out) else f"Darknet weights for {READERS[args.reader].label}"
    print(f"wrote {args.out} ({kind}, {os.path.getsize(args.out):,} bytes, "
          f"{len(model.module_defs)} layers{'' if args.cutoff is None else f', cutoff {args.cutoff}'})")


if __name__ == "__main__":
    cli_main(main)
