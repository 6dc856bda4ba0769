"""Sample-quality metrics: Frechet distances of features (FID), feature extractors, reference statistics,
improved precision/recall. Heavy pieces (Inception, the digits classifier) are imported where used."""

from distill.evaluation.metrics.frechet import frechet_distance, gaussian_stats
from distill.evaluation.metrics.precision_recall import precision_recall
from distill.evaluation.metrics.stats import FeatureStats

__all__ = ["FeatureStats", "frechet_distance", "gaussian_stats", "precision_recall"]
