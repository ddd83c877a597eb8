"""Container entrypoint: ``python -m stages <step> [options]`` dispatches to one pipeline step.

Steps are imported lazily, so ``--help`` and light steps never import torch. Every step is a typer
application in ``stages/<package>/cli.py`` exposed as ``app``; errors derived from
:class:`stages.errors.NnkubeError` become their exit code without a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

from stages.errors import EXIT_BAD_INPUT, NnkubeError
from stages.log import setup_logging

# step name -> (module holding a typer ``app``, one-line description)
STEPS: dict[str, tuple[str, str]] = {
    "convert": ("stages.dataset.cli_convert", "Convert an MSD task into the nnU-Net v1 TaskXXX_NAME layout."),
    "verify": ("stages.dataset.cli_verify", "Verify a raw dataset's integrity; report every problem."),
    "fingerprint": ("stages.fingerprint.cli", "Extract the dataset fingerprint (crop, shapes, intensities)."),
    "plan": ("stages.plan.cli", "Plan 2d / 3d_fullres / 3d_lowres configurations from a fingerprint."),
    "preprocess": ("stages.preprocess.cli", "Crop, resample and normalize cases for one configuration."),
    "train": ("stages.train.cli", "Train one configuration x fold (resumable, DDP when several devices)."),
    "validate": ("stages.train.cli_validate", "Rerun the final validation of a trained fold."),
    "predict": ("stages.predict.cli", "Predict new cases (sliding window, mirroring TTA, fold averaging)."),
    "evaluate": ("stages.evaluate.cli", "Evaluate predictions against references (summary.json)."),
    "postprocess": ("stages.postprocess.cli", "Determine or apply connected-component postprocessing."),
    "select": ("stages.select.cli", "Find the best configuration or pair ensemble from cross-validation."),
    "ensemble": ("stages.ensemble.cli", "Average saved probabilities of several predictions."),
    "list-cases": ("stages.listcases.cli", "List the cases under a prefix and write a shard plan."),
}


def _usage() -> str:
    width = max(len(n) for n in STEPS)
    lines = [
        "usage: python -m stages <step> [options]   (python -m stages <step> --help for its options)",
        "",
        "Steps:",
    ]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in STEPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a step and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage() + "\n")
        return 0 if argv else EXIT_BAD_INPUT
    name, rest = argv[0], argv[1:]
    if name not in STEPS:
        sys.stderr.write(f"unknown step {name!r}\n\n{_usage()}\n")
        return EXIT_BAD_INPUT
    setup_logging()
    module = importlib.import_module(STEPS[name][0])
    try:
        module.app(args=rest, prog_name=f"python -m stages {name}", standalone_mode=False)
    except NnkubeError as exc:
        logging.getLogger("stages").error("%s", exc)
        return exc.exit_code
    except SystemExit as exc:  # typer/click exit paths (e.g. --help)
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors carry their own exit code
        code = getattr(exc, "exit_code", None)
        if code is not None and hasattr(exc, "show"):
            exc.show()
            return EXIT_BAD_INPUT
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
