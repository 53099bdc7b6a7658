"""Copy the compiled extension out of the wheel `make` built into python/clipfast/, so that the
tests and benchmarks import the very binary the wheel ships (one compilation serves both).

usage: install_native.py WHEEL_DIR PACKAGE_DIR

The file is replaced by a rename, never rewritten in place: a process that has the old one mapped
keeps running, and an unchanged binary is left alone.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path


def main(wheel_dir: str, package_dir: str) -> int:
    wheels = sorted(Path(wheel_dir).glob("*.whl"))
    if len(wheels) != 1:
        print(f"install_native: expected one wheel in {wheel_dir}, found {len(wheels)}", file=sys.stderr)
        return 2
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [
            n for n in wheel.namelist() if n.startswith("clipfast/_native") and n.endswith((".so", ".pyd"))
        ]
        if len(members) != 1:
            print(f"install_native: {wheels[0]} holds {members}, expected one extension", file=sys.stderr)
            return 2
        data = wheel.read(members[0])
    target = Path(package_dir) / Path(members[0]).name
    if target.is_file() and target.read_bytes() == data:
        return 0
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_bytes(data)
        partial.chmod(0o755)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
