"""Release a CTMWA model: train (optional) -> export -> validate -> publish, and move the CURRENT pointer.

    prepare -> export_encoders -> features -> train -> export_head -> validate -> publish

Give exactly one of `training_posts` (labelled posts: embedded with the freshly exported encoders, then trained on),
`features` (already embedded with the same encoders) or `checkpoint` (export without training); `encoders` reuses the
encoders of an existing bundle (a new head for the same CLIP, without exporting CLIP again). The bundle lands at
`{models_root}/{model_version}/`; `make_current` moves `{models_root}/CURRENT` to it atomically, and the next scoring
run picks it up when it plans. Tasks run on CTMWA_TRAIN_QUEUE (machines with the `export` extra: torch). Wiring
only: every task is one call into ctmwa_export.release.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task

from ctmwa_batch.settings import MODELS_ASSET_NAME, MODELS_ASSET_URI, Settings

SETTINGS = Settings.load()  # parse time: only train_queue is used here
MODELS = Asset(name=MODELS_ASSET_NAME, uri=MODELS_ASSET_URI)


@dag(
    dag_id="ctmwa_export_model",
    description="Train, export, validate and publish a CTMWA model bundle",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ctmwa", "model"],
    doc_md=__doc__,
    default_args={"owner": "ctmwa", "queue": SETTINGS.train_queue},
    params={
        "clip_source": Param(
            "openai/clip-vit-base-patch32",
            type="string",
            description="transformers hub id or local folder of the CLIP model",
        ),
        "clip_revision": Param(
            None, type=["null", "string"], description="hub revision (branch, tag, commit); null = default"
        ),
        "encoders": Param(
            None,
            type=["null", "string"],
            description="reuse this bundle's encoders (e.g. the current model's) instead of exporting clip_source",
        ),
        "training_posts": Param(
            None, type=["null", "string"], description="labelled posts Parquet to embed and train on"
        ),
        "features": Param(
            None, type=["null", "string"], description="or: a features Parquet embedded with the same encoders"
        ),
        "checkpoint": Param(
            None, type=["null", "string"], description="or: a trained checkpoint folder to export without training"
        ),
        "labels": Param(
            None,
            type=["null", "string"],
            description="comma-separated class names in label order; null = from the features",
        ),
        "train_config": Param({}, type="object", description='ctmwa-train --config, e.g. {"training": {"lr": 0.001}}'),
        "epochs": Param(
            None, type=["null", "integer"], minimum=1, description="training epochs; null = the default (20)"
        ),
        "seed": Param(None, type=["null", "integer"], description="training seed; null = the default (1111)"),
        "calibrate": Param(False, type="boolean", description="fit a softmax temperature on the features' valid split"),
        "torch_threads": Param(
            None, type=["null", "integer"], minimum=1, description="torch threads while training; null = every core"
        ),
        "make_current": Param(True, type="boolean", description="move CURRENT to the new version"),
        "models_root": Param(None, type=["null", "string"], description="where to publish; null = CTMWA_MODELS_ROOT"),
    },
)
def ctmwa_export_model():
    @task
    def prepare(params=None, run_id=None) -> dict:
        """Check the inputs and make the run's work folder under the models root."""
        from ctmwa_export import release

        return release.prepare(params, run_id)

    @task
    def export_encoders(state: dict) -> str:
        """CLIP's image and text towers to ONNX, parity-checked against PyTorch and the runtime's preprocessing."""
        from ctmwa_export import release

        return release.export_encoders(state)

    @task
    def features(state: dict, encoders_dir: str) -> str | None:
        """Embed the labelled posts with the new encoders (the scoring path, so training and serving agree)."""
        from ctmwa_export import release

        return release.features(state, encoders_dir)

    @task
    def train(state: dict, features_path: str | None) -> str:
        """ctmwa-train (meta-weight CTMWA, best validation epoch kept), or the given checkpoint."""
        from ctmwa_export import release

        return release.train(state, features_path)

    @task
    def export_head(state: dict, checkpoint_dir: str, encoders_dir: str, features_path: str | None) -> str:
        """The head (translator included) to ONNX beside the encoders: the complete bundle (calibrated on request)."""
        from ctmwa_export import release

        return release.export_head(state, checkpoint_dir, encoders_dir, features_path)

    @task
    def validate(state: dict, bundle_dir: str) -> dict:
        """Checksums, completeness, and a smoke score of generated posts through the runtime scorer."""
        from ctmwa_export import release

        return release.validate(state, bundle_dir)

    @task(outlets=[MODELS])
    def publish(state: dict, bundle_dir: str, validation: dict) -> dict:
        """Copy the bundle to {models_root}/{version}/ and move CURRENT (both atomic)."""
        from ctmwa_export import release

        return release.publish(state, bundle_dir)

    state = prepare()
    encoders = export_encoders(state)
    embedded = features(state, encoders)
    checkpoint = train(state, embedded)
    bundle = export_head(state, checkpoint, encoders, embedded)
    publish(state, bundle, validate(state, bundle))


ctmwa_export_model()
