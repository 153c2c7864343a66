"""`python -m shrinkteanet` == the `shrinkteanet` console script."""
from shrinkteanet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
