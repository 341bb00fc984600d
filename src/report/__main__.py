"""`python -m src.report`: the command line of src/report/build.py."""

from __future__ import annotations

import sys

from src.report.build import main

sys.exit(main())
