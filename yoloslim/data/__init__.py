"""Data: image/label loading, the synthetic data set, k-means anchors."""
