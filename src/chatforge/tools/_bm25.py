"""`bm25s` imported on its numpy backend, without numba.

bm25s imports numba whenever it is installed (vLLM installs it), and once numba is loaded vLLM 0.32's in-process
engine (TRL's colocate mode) fails to start: its kernel-override scan trips on llvmlite. Our indexes are small, so
the numpy backend loses nothing; hiding numba while bm25s loads keeps any process that imports the tools able to
start vLLM afterwards.
"""

from __future__ import annotations

import sys

if "bm25s" in sys.modules:
    import bm25s
else:
    _numba = {
        name: sys.modules.pop(name) for name in list(sys.modules) if name == "numba" or name.startswith("numba.")
    }
    sys.modules["numba"] = None  # type: ignore[assignment]  # `import numba` now raises ImportError
    try:
        import bm25s
    finally:
        del sys.modules["numba"]
        sys.modules.update(_numba)

__all__ = ["bm25s"]
