import sys

from src.sweeps.cli import main

if __name__ == "__main__":
    sys.exit(main())
