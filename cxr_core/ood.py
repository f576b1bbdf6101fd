"""`cxr_core.ood` is `cxr_core.gate.ood` (the same module object, so patches and state are shared).

Kept because `from cxr_core import ood` and `python -m cxr_core.ood ...` are in people's scripts.
"""

import sys

from cxr_core.gate import ood as _module

if __name__ == "__main__":
    sys.exit(_module.main())
else:
    sys.modules[__name__] = _module
