"""Training of petseg fold ensembles: losses, data, the trainer, multi-GPU runs and export.

`training` imports `petseg` (preprocessing, model card, networks), never the other way round, so the
inference container needs none of it.
"""
