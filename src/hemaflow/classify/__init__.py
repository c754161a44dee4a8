"""White-blood-cell classifiers: options, training with early stopping, inference."""
