"""The `--device` and `--precision` choices, apart from `petseg.inference.predict` so that argument
parsers need not import torch.

Devices: "auto" takes CUDA when there is one and the CPU otherwise; "cuda" fails when there is none; "cpu"
never touches a GPU (see `petseg.inference.predict.select_device`).

Precisions: "auto" lets the networks run in the device's fastest reduced precision; "fp32" keeps every
operation in float32, in the default memory layout: what another fp32 pipeline computes, up to the float
rounding of the batch norms that `petseg.inference.predict.Predictor` folds into the convolutions.
"""

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32")
