"""Deployment references and measures: OpenCV DNN, the original Darknet, parity gates, FLOPs, latency."""
