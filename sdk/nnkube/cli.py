"""The ``nnkube`` command line: dataset tools, the local runner (demo) and workflow submission."""

from __future__ import annotations

import typer

from nnkube.commands.dataset import dataset_app

app = typer.Typer(
    name="nnkube",
    help="nnU-Net as a Kubernetes batch system: run stages locally, submit and watch Argo workflows.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)
app.add_typer(dataset_app, name="dataset")


def main() -> None:
    """Console-script entry point."""
    from stages.log import setup_logging

    setup_logging()
    app()
