#!/usr/bin/env python3
"""Grand-Challenge algorithm entry point (autoPET contract).

Reads the one CT and one PET in /input/images/{ct,pet}/, writes the lesion mask to
/output/images/automated-petct-lesion-segmentation/<pet-uuid>.mha and /output/data-centric-model.json.
Local runs: `python process.py --input DIR --output DIR [--model DIR]`. All logic lives in `petseg`.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run from a checkout or the container without installing

from petseg.app.process import process_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(process_main(sys.argv[1:], script_dir=HERE))
