"""The nnkube runtime: nnU-Net v1 pipeline steps as plain functions with thin command lines.

Each subpackage is one pipeline step (``dataset``, ``fingerprint``, ``plan``, ``preprocess``, ``train``,
``predict``, ``evaluate``, ``postprocess``, ``select``, ``ensemble``). ``python -m stages <step>`` is the
container entrypoint that dispatches to them. Shared pieces live beside them: ``storage`` (URIs over local
paths and S3), ``imageio`` (SimpleITK reading/writing that keeps geometry), ``errors`` and ``log``.
"""

__version__ = "0.1.0"
