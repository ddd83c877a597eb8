"""The model-selection decision (``ensembles/<task>/selection.json``) that workflows read (spec §11.1)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from stages import storage
from stages.documents import Document

SELECTION_JSON = "selection.json"
PREDICTION_COMMANDS = "prediction_commands.txt"
SUMMARY_CSV = "summary.csv"
ENSEMBLES = "ensembles"
ENSEMBLED_RAW = "ensembled_raw"
ENSEMBLED_POSTPROCESSED = "ensembled_postprocessed"


class SelectedModel(BaseModel):
    """One trained model (configuration x trainer x plans) taking part in the chosen prediction.

    Attributes:
        configuration: ``2d``, ``3d_fullres``, ``3d_lowres`` or ``3d_cascade_fullres``.
        trainer: Trainer class name.
        plans_identifier: Plans identifier.
        trainer_dir: The model's folder, relative to :attr:`Selection.results_folder`.
    """

    model_config = ConfigDict(extra="forbid")

    configuration: str
    trainer: str
    plans_identifier: str
    trainer_dir: str


class Selection(Document):
    """Which model or pair of models to predict with, and why.

    Attributes:
        task: Task name (``Task004_Hippocampus``).
        results_folder: The ``RESULTS_FOLDER`` root (path or URI) the relative paths below start from.
        best: Key of the winner: a configuration name, or ``ensemble_<c1>__<tr1>__<pl>--<c2>__<tr2>__<pl>``.
        score: The winner's cross-validation foreground mean Dice (raw, before postprocessing).
        models: The one or two models to predict with.
        postprocessing_json: Rules to apply after prediction (or after ensembling), relative to
            ``results_folder``.
        scores: Every candidate's score, in evaluation order.
        configurations: Configurations that were evaluated.
        skipped_configurations: Requested configurations without a trained model (non-strict mode).
        trainer: Trainer of the non-cascade configurations.
        cascade_trainer: Trainer of ``3d_cascade_fullres``.
        plans_identifier: Plans identifier of every model.
        folds: Cross-validation folds used.
        ensembling: Whether pairs were considered.
        commands: The prediction commands for the winner (as in ``prediction_commands.txt``).
    """

    KIND = "model selection"
    SCHEMA_VERSION = 1

    task: str
    results_folder: str
    best: str
    score: float | None
    models: list[SelectedModel]
    postprocessing_json: str
    scores: dict[str, float | None] = Field(default_factory=dict)
    configurations: list[str] = Field(default_factory=list)
    skipped_configurations: list[str] = Field(default_factory=list)
    trainer: str
    cascade_trainer: str
    plans_identifier: str
    folds: list[int | str] = Field(default_factory=list)
    ensembling: bool = True
    commands: list[str] = Field(default_factory=list)

    @property
    def is_ensemble(self) -> bool:
        """True when the winner is a pair of models."""
        return len(self.models) > 1

    def resolve(self, relative: str) -> str:
        """A path of this document (relative to ``results_folder``) as a full path or URI."""
        return storage.join(self.results_folder, relative)
