"""`python -m cxr_core.batch` and `python -m cxr_core batch run` (the one-CLI router imports this
module and calls `main(argv)`, so nothing may run at import)."""

from cxr_core.batch.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
