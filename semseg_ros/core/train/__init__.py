"""Training on one's own data: datasets, importers, the training loop, the gate and export."""
