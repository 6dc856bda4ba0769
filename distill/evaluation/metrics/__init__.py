"""Sample-quality metrics. Frechet distances through torchmetrics (fid.py), Inception from torch-fidelity
(inception.py), precision/recall from torch-fidelity, image folders through clean-fid (folders.py); the
project keeps only what no library has: the digits classifier (digits_features.py), pixel features and the
extractor registry (extractors.py), and readers of reference-statistics layouts (reference.py). Heavy pieces
are imported where used."""
