"""Evaluation: P / R / mAP and the label-free agreement score."""
