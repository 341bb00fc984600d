"""`python -m src.evaluate RUN_DIR [overrides]`: evaluate a finished run again (src.finished_runs.main)."""

from src.finished_runs import main

if __name__ == "__main__":
    raise SystemExit(main())
