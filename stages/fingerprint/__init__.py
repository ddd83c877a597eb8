"""Pipeline step: fingerprint (spec §2).

Modules: ``models`` (the Fingerprint document), ``extract`` (``extract_fingerprint(task_dir, num_processes)``)
and ``cli``. Cropping to the nonzero region lives in :mod:`stages.preprocess.cropping`.
"""
