"""The `--precision` choices, apart from `petseg.inference.predict` so that argument parsers need not
import torch.

"auto" lets the networks run in the device's fastest reduced precision (see
`petseg.inference.predict.select_device`);
"fp32" keeps every operation in float32, in the default memory layout: what another fp32 pipeline computes,
up to the float rounding of the batch norms that `petseg.inference.predict.Predictor` folds into the
convolutions.
"""

PRECISIONS = ("auto", "fp32")
