"""``fetal``: the project's command line (argparse sub-commands).

Each sub-command's options and code live in the module that owns its logic, as
``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the command being run is
imported, so ``fetal --help`` stays fast; ``fetal COMMAND --help`` lists that command's options.
The modules' own ``main(argv)`` (``python -m stages.ctg.serving.score --help``) go through
:func:`run_command`, so both entry points parse with the same parser. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> (owning module, one-line help shown by ``fetal --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "score-ctg": ("stages.ctg.serving.score", "Score WFDB CTG records with the champion model."),
    "score-us": (
        "stages.ultrasound.serving.score",
        "Score ultrasound images with the champion models.",
    ),
    "compare-models": ("flows.registry", "Show a registered model's versions side by side."),
    "promote": ("flows.promote", "Push the outputs (dvc push), then decide the champions."),
    "replay-ctg": ("flows.replay", "Stream a WFDB record as growing CSV chunks (demo/tests)."),
    "add-data": (
        "stages.common.intake.add_data",
        "Check new records or images; add them to landing/.",
    ),
    "serve": (
        "stages.common.serving",
        "Serve the CTG champion over HTTP (token, body cap).",
    ),
    "payload-ctg": (
        "stages.ctg.serving.payload",
        "Write a fetal serve request body from a WFDB CTG record.",
    ),
    "summary": ("flows.summary", "Each model's champion, its figure and what changed: the run."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``fetal`` parser; only ``command``'s module is imported and given its options."""
    parser = argparse.ArgumentParser(
        prog="fetal", description="Fetal CTG and ultrasound models: scoring and registry tools."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, summary) in COMMANDS.items():
        cmd = sub.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == command:
            module = importlib.import_module(module_name)
            cmd.description = module.__doc__ or summary
            module.add_arguments(cmd)
            cmd.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before any command imports TensorFlow: its C++ INFO/WARNING start-up lines are not for
    # users (a value set by the user wins). The scoring commands also send the rest to a log
    # file (stages.common.scoring.quiet_libraries).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)  # usage errors: SystemExit(2)
    return int(args.run(args) or 0)


def run_command(command: str, argv: list[str] | None = None) -> int:
    """``fetal COMMAND *argv``: the owning modules' ``main`` (``python -m module``) call this."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
