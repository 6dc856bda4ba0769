"""Training: the LightningModule, building the student, `fit` (run directory, resume), callbacks, scaling."""
