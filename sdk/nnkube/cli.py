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


@app.command()
def demo(
    dataset: str = typer.Option(..., "--dataset", help="MSD task folder (e.g. ../shared/datasets/Task04_Hippocampus)."),
    workdir: str = typer.Option("demo_work", "--workdir", help="Storage root of the embedded default (local disk)."),
    epochs: int = typer.Option(1, "--epochs", help="Training epochs of the demo's fold-0 training."),
    iterations: int = typer.Option(10, "--iterations", help="Training iterations per epoch."),
    no_train: bool = typer.Option(False, "--no-train", help="Stop after preprocessing."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Mirroring test-time augmentation when predicting "
                             "imagesTs (8x slower on a CPU; off by default for a quick demo)."),
) -> None:
    """Run the whole pipeline locally (convert, verify, fingerprint, plan, preprocess, train, predict)."""
    from nnkube.demo import run_demo

    folder = run_demo(dataset, workdir, epochs, iterations, train=not no_train, tta=tta)
    typer.echo(f"demo finished; step results in {folder}")


def main() -> None:
    """Console-script entry point."""
    from stages.log import setup_logging

    setup_logging()
    app()
