"""Figures to files: matplotlib without a display, written atomically."""


def pyplot():
    """matplotlib.pyplot on the file-only backend (imported on first use: it is slow to import)."""
    import matplotlib
    matplotlib.use("Agg")          # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path):
    """Write ``fig`` to ``path`` (whole or not at all) and free it."""
    from yoloslim.io import atomic_write
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    pyplot().close(fig)
    return path
