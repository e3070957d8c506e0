"""The `--device` and `--precision` choices, apart from `petseg.inference.predict` so that argument
parsers need not import torch.

Devices: "auto" takes CUDA when there is one and the CPU otherwise; "cuda" fails when there is none; "cuda:N"
is GPU N, for several GPUs on one machine (one process per GPU); "cpu" never touches a GPU (see
`petseg.inference.predict.select_device`).

Precisions: "auto" lets the networks run in the device's fastest reduced precision; "fp32" keeps every
operation in float32, in the default memory layout: what another fp32 pipeline computes, up to the float
rounding of the batch norms that `petseg.inference.predict.Predictor` folds into the convolutions.
"""

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32")


def parse_device(text: str) -> tuple[str, int | None]:
    """("auto" | "cuda" | "cpu", GPU index or None) for a device name; ValueError for anything else."""
    kind, colon, index = text.partition(":")
    if not colon and kind in DEVICES:
        return kind, None
    if kind == "cuda" and index.isdigit() and index.isascii():
        return kind, int(index)
    raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N (N = 0, 1, ...), got {text!r}")


def device_argument(text: str) -> str:
    """argparse type of --device: a name `parse_device` accepts, kept as given."""
    import argparse

    try:
        parse_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text
