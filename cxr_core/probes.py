"""`cxr_core.probes` is `cxr_core.classify.probes` (the same module object; see cxr_core/_alias.py).

Kept because `from cxr_core import probes` and `python -m cxr_core.probes ...` are in people's scripts.
"""

from cxr_core._alias import alias

alias(__name__, "cxr_core.classify.probes")
