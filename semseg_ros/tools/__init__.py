"""Console tools: camera source, demo, evaluation."""
