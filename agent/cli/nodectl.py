"""`nodectl`: entry point reserved for the master/registration issue; not implemented yet."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent import __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["version"]:
        print(f"nodectl {__version__}")
        return 0
    print(
        "nodectl: not implemented yet (comes with the master and registration issue)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
