"""Training parts: loss, BN sparsity, distillation, transfer of pretrained weights, EMA."""
