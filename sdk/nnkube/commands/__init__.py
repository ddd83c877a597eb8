"""Sub-commands of the ``nnkube`` CLI, one typer app per module."""
