"""Old module names that stay importable and runnable after a module moved into a task package.

`from cxr_core import train` and `python -m cxr_core.train ...` are in people's scripts. An alias
module calls `alias(__name__, "cxr_core.classify.train")`: imported, it replaces itself in
`sys.modules` by the new module (one object, so monkeypatches and module state are shared whichever
name reached them); run with ``-m``, it runs the new module's `main` and exits with its status.
"""

from __future__ import annotations

import importlib
import sys


def alias(name: str, target: str) -> None:
    module = importlib.import_module(target)
    if name == "__main__":
        sys.exit(module.main())
    sys.modules[name] = module
