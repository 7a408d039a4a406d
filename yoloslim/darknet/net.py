"""Facts of the [net] section that every tool checks before a model exists (no torch here)."""
from yoloslim.errors import CfgError

# the largest stride of every supported network: input sizes are multiples of it
STRIDE = 32


def check_net_size(module_defs, path):
    """The cfg's [net] width/height: positive multiples of STRIDE (a 0 would reach a PyTorch error)."""
    net = module_defs[0]
    for key in ("width", "height"):
        value = net.get(key, 416)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % STRIDE:
            where = net.where() if hasattr(net, "where") else f"{path} [net]"
            raise CfgError(f"{where}: {key}={value!r} must be a positive multiple of {STRIDE} (e.g. 416); "
                           f"fix the cfg")
    return module_defs
