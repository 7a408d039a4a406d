"""The pruning engine: graph analysis, policies and plans, surgery, the written pair, reports."""
