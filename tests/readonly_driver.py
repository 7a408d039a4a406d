"""Run one command-line script several times in one interpreter, as ``python SCRIPT ARGS`` would.

    python tests/readonly_driver.py SCRIPT CASES.json   ->   JSON list of {argv, code, stderr}

Each case executes the script's ``__main__`` block with its own ``sys.argv`` (runpy), so the
tool parses real flags and exits the way it does for a user; only the interpreter start and
the imports are shared, which keeps a catalogue of a hundred command lines to seconds on a
busy machine. An exception that escapes the script is recorded as code "traceback".
"""
import contextlib
import io
import json
import runpy
import sys
import traceback


def run_case(script, argv):
    sys.argv = [script, *argv]
    err, out, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:   # noqa: B902 - the point is to see anything that escapes
            code = "traceback"
            traceback.print_exc(file=err)
    return {"argv": argv, "code": code, "stderr": err.getvalue()}


def main():
    script, cases_path = sys.argv[1], sys.argv[2]
    with open(cases_path) as f:
        cases = json.load(f)
    results = [run_case(script, argv) for argv in cases]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
