"""nnkube SDK: the ``nnkube`` command line and client, and the classic ``nnUNet_*`` commands.

Nothing here imports torch at module level: the SDK installs without the runtime extra.
"""

__version__ = "0.1.0"
