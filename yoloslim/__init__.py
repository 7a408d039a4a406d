"""yolo-slim: network slimming for Darknet YOLO models, as a library in named parts."""
