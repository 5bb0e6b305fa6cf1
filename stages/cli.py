"""``fetal``: the project's command line.

Each sub-command lives in the module that owns its logic; this file only dispatches, importing
lazily so ``fetal --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "score-ctg": ("stages.ctg.score", "Score WFDB CTG records with the champion model."),
    "score-us": ("stages.ultrasound.score", "Score ultrasound images with the champion models."),
    "compare-models": ("flows.registry", "Show a registered model's versions side by side."),
    "replay-ctg": ("flows.replay", "Stream a WFDB record as growing CSV chunks (demo/tests)."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        width = max(len(c) for c in COMMANDS)
        lines = [f"  {c:<{width}}  {h}" for c, (_, h) in COMMANDS.items()]
        print("usage: fetal COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"\nfetal: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
