"""Sample-quality metrics: Frechet distances of features, trajectory errors."""

from distill.metrics.frechet import frechet_distance, gaussian_stats

__all__ = ["frechet_distance", "gaussian_stats"]
