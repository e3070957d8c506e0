#!/usr/bin/env python3
"""Grand-Challenge algorithm entry point in "invoke" mode (autoPET contract).

Serves GET /health and POST /invoke on port 4743: the ensemble is loaded once at start-up and each
request segments the case in /input into /output, exactly as `process.py` does for one job.
Local runs: `python app.py --input DIR --output DIR --port N [--model DIR] [--device cpu] [--host H]`.
All logic lives in `petseg.app.server`.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # run from a checkout or the container without installing

from petseg.app.server import server_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(server_main(sys.argv[1:], script_dir=HERE))
