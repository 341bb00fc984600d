"""Each trial's images as Optuna artifacts, for optuna-dashboard's trial pages.

Off unless `hydra.sweeper.artifact_dir=DIR` names a directory (it holds a copy of every image, so it
costs disk). The job that runs a trial uploads its results.json `images` to Optuna's
FileSystemArtifactStore in DIR while its trial is still running (Optuna attaches artifacts to running
trials only). `python -m src.sweeps dashboard` with the same overrides serves them. An upload that fails
never fails the job: one warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)


def artifact_store(hydra_cfg: Any):
    """The sweep's FileSystemArtifactStore (its directory created), or None when artifacts are off."""
    directory = OmegaConf.select(hydra_cfg, "sweeper.artifact_dir", default=None)
    if not directory:
        return None
    import optuna

    path = Path(str(directory)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(path)


def upload_images(hydra_cfg: Any, study_name: str | None, trial_id: int | None, run_dir: Path) -> int:
    """Upload the run's images to its trial; the number uploaded (0 when off or outside a trial)."""
    if trial_id is None or not study_name or not OmegaConf.select(hydra_cfg, "sweeper.artifact_dir", default=None):
        return 0
    import optuna

    from src.sweeps.storage import StudyStorageError, load_existing_study, storage_error, storage_errors

    try:
        names = json.loads((run_dir / "results.json").read_text()).get("images") or []
        store = artifact_store(hydra_cfg) if names else None
    except (OSError, ValueError) as e:
        log.warning("trial images not stored as Optuna artifacts: %s", e)
        return 0
    images = [run_dir / name for name in names if (run_dir / name).is_file()]
    if not images:
        return 0
    storage = str(OmegaConf.select(hydra_cfg, "sweeper.storage"))
    try:
        trial = optuna.trial.Trial(load_existing_study(storage, study_name), trial_id)
        for image in images:
            optuna.artifacts.upload_artifact(
                artifact_store=store, file_path=str(image), study_or_trial=trial, mimetype="image/png"
            )
    except StudyStorageError as e:
        log.warning("trial images not stored as Optuna artifacts: %s", e)
        return 0
    except storage_errors() as e:
        log.warning("trial images not stored as Optuna artifacts: %s", storage_error(storage, e))
        return 0
    log.info("%d images stored as Optuna artifacts of trial %s", len(images), trial_id)
    return len(images)
