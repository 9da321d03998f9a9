"""Evaluation metrics shipped as offline ``evaluate`` modules (one folder per metric)."""
