"""Evaluation: report.json (FID, trajectory error), few-step schedule search, figures, feature metrics."""
