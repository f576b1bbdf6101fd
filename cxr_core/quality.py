"""`cxr_core.quality` is `cxr_core.gate.quality` (the same module object, so patches and state are shared).

Kept because `from cxr_core import quality` and `python -m cxr_core.quality ...` are in people's scripts.
"""

import sys

from cxr_core.gate import quality as _module

if __name__ == "__main__":
    sys.exit(_module.main())
else:
    sys.modules[__name__] = _module
