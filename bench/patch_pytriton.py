"""Make PyTriton 0.7 start on a CPython 3.11 newer than the one its backend stub embeds.

    python bench/patch_pytriton.py      # with the benchmark venv's python; idempotent

The stub binary (pytriton/tritonserver/python_backend_stubs/3.11) embeds an older CPython 3.11
whose C `RLock` lacks `_recursion_count`, yet loads this interpreter's 3.11.7 standard library,
whose `multiprocessing.resource_tracker` calls it: the model fails to load with
"AttributeError: '_thread.RLock' object has no attribute '_recursion_count'". The stub runs
without `site`, so no sitecustomize can fix it; this swaps in the pure-Python RLock (which has
the method) in the one PyTriton module that starts the tracker, in the benchmark venv only.
"""

from __future__ import annotations

from pathlib import Path

import pytriton.proxy.data as data

ANCHOR = "        tracker_fd = resource_tracker.getfd()\n"
PATCH = (
    "        import threading  # bench/patch_pytriton.py\n"
    "        if not hasattr(resource_tracker._resource_tracker._lock, '_recursion_count'):\n"
    "            resource_tracker._resource_tracker._lock = threading._PyRLock()\n"
)


def main() -> None:
    path = Path(data.__file__)
    text = path.read_text()
    if PATCH in text:
        print(f"{path}: already patched")
        return
    if ANCHOR not in text:
        raise SystemExit(f"{path}: anchor not found; PyTriton version changed?")
    path.write_text(text.replace(ANCHOR, PATCH + ANCHOR, 1))
    print(f"{path}: patched")


if __name__ == "__main__":
    main()
