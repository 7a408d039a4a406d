"""``--report-only`` for the benchmark scripts: their page written again from the results file a
finished run left, without measuring anything."""
import json

from yoloslim.errors import SlimError


def rewrite_from(path, write):
    """Read the JSON results at ``path`` and return ``write(results)``. An unreadable file, or one
    that another version of the script wrote, is one error line naming it."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        raise SlimError(f"{path}: cannot read the results of a finished run ({e}); run without --report-only")
    try:
        return write(results)
    except (KeyError, TypeError) as e:   # another version's results, or not this script's
        raise SlimError(f"{path}: no {e} in it (not written by this version of the benchmark); "
                        f"run without --report-only to measure again")
