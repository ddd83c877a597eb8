"""Pipeline step: plan (spec §3).

Modules: ``models`` (the Plans document), ``topology`` (pooling/conv topology and memory proxy), ``base`` (shared
planner logic), ``planner3d`` / ``planner2d`` (``ExperimentPlanner3D_v21`` and variants, ``ExperimentPlanner2D_v21``),
``registry`` (``get_planner(name)``), ``experiment`` (``plan_experiment``, ``write_plans``) and ``cli``.
"""
