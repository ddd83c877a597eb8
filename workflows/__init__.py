"""Hera builders for the Argo workflows (training fan-out, inference, the inference CronWorkflow).

Each workflow will be a pure function from a typed spec to a Hera object, rendered to YAML and validated against
the Argo schema; the stages they run are ``python -m stages <step>`` (see ``stages/__main__.py``), already usable
through the local runner (``nnkube demo``). Not built yet: no issue covers the builders so far.
"""
