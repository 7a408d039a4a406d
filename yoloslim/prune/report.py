"""Tables a prune run prints: kept channels per layer, and the before/after comparison."""


def _table(rows, title=None):
    try:
        from terminaltables import AsciiTable
        table = AsciiTable(rows, title)
        return table.table
    except ImportError:  # plain fallback keeps the scripts usable without the optional package
        widths = [max(len(str(r[k])) for r in rows) for k in range(len(rows[0]))]
        lines = [("  ".join(str(c).rjust(w) for c, w in zip(r, widths))) for r in rows]
        return "\n".join(([title] if title else []) + lines)


def kept_text(after, before):
    """'kept 1/256 (pruned 99.6%)': a bare '100%' once read as 'kept all' for a layer left with one channel."""
    return f"kept {after}/{before} (pruned {1 - after / before:.1%})"


def channel_table(model, plans):
    """One row per conv whose width changed or that was removed."""
    rows = [["layer", "type", "before", "after", "channels"]]
    for plan in plans:
        for block in plan.removed_blocks:
            for i in (*block.convs, block.shortcut):
                kind = model.module_defs[i]["type"] if i < len(model.module_defs) else "?"
                rows.append([i, kind, "-", "removed", "layer removed"])
        for i, keep in sorted(plan.masks.items()):
            before, after = keep.numel(), int(keep.sum())
            if after != before:
                rows.append([i, "conv", before, after, kept_text(after, before)])
    return _table(rows, " kept channels ")


def comparison_table(before, after):
    """before/after: dicts of metric name -> value (None = not measured)."""
    rows = [["metric", "original", "pruned", "change"]]
    for key, label, fmt in (("mAP50", "mAP@0.5", "{:.4f}"), ("agreement", "agreement mAP@0.5", "{:.4f}"),
                            ("boxes", "boxes at conf 0.25", "{:,}"), ("params", "params", "{:,}"),
                            ("GFLOPs", "GFLOPs", "{:.3f}"), ("torch_ms", "torch ms", "{:.2f}"),
                            ("opencv_ms", "opencv ms", "{:.2f}"), ("onnxruntime_ms", "onnxruntime ms", "{:.2f}"),
                            ("openvino_ms", "openvino ms", "{:.2f}"), ("weights_MB", "weights MB", "{:.2f}")):
        a, b = before.get(key), after.get(key)
        if a is None and b is None:
            continue
        change = ""
        if a not in (None, 0) and b is not None:
            change = (f"{b - a:+.4f}" if key in ("mAP50", "agreement") else f"{b - a:+,}" if key == "boxes"
                      else f"x{a / b:.2f}" if b else "")
        rows.append([label, "-" if a is None else fmt.format(a), "-" if b is None else fmt.format(b), change])
    return _table(rows, " before / after ")


def removed_share(plans):
    """The share of the plans' prunable channels they remove."""
    masks = [m for plan in plans for m in plan.masks.values()]
    return sum(int((~m).sum()) for m in masks) / max(1, sum(m.numel() for m in masks))
