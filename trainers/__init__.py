"""Pre-training, fine-tuning, attention analysis and the structured-vs-plain experiment."""
