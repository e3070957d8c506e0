"""petseg: whole-body PET/CT lesion segmentation with a five-fold ResUNet ensemble."""

__version__ = "0.1.0"
