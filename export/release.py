"""Model release: CLIP weights and labelled posts in, a published, current bundle out. One function per step; the
ctmwa_export_model DAG calls them one task each, and `release(...)` runs them in a row without Airflow.

    prepare          check the inputs, make a work folder under {models_root}/.staging/
    export_encoders  CLIP -> image_encoder.onnx, text_encoder.onnx, tokenizer.json (ctmwa_export.assemble, parity-checked)
    features         labelled posts -> features Parquet, embedded with *those* encoders (the scoring path: no skew)
    train            ctmwa_training.train on the features (or reuse a given checkpoint)
    export_head      ctmwa-export head: head.onnx joins the encoders, validated against PyTorch -> complete bundle
    validate         checksums, completeness, and a smoke score of generated posts (bad rows included) by the runtime
    publish          {models_root}/{model_version}/ and the CURRENT pointer, both moved atomically (ctmwa_batch.model.registry)

Work files live under the models root because the tasks may run on different machines: the models root is the
storage they all share. A models root in an object store (s3://...) takes the bundle only: the work files then go to
CTMWA_RELEASE_WORK_ROOT (a folder the export tasks share), and the bundle is uploaded at publish. Every step writes its output whole or not at all, so a retried task starts clean.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctmwa_batch.errors import CtmwaError
from ctmwa_batch.settings import Settings

logger = logging.getLogger(__name__)

STAGING = ".staging"
ENV_WORK_ROOT = "CTMWA_RELEASE_WORK_ROOT"  # the work folder's root when the models root is in an object store
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


class ReleaseError(CtmwaError):
    """A release input is missing or inconsistent, or a step produced nothing usable."""


@dataclass(frozen=True)
class ReleaseConfig:
    """What one release does (the ctmwa_export_model DAG's params)."""

    models_root: str  # where the bundle is published; work files go to {models_root}/.staging/
    clip_source: str = (
        DEFAULT_CLIP  # transformers hub id or local folder of a CLIP model (+ tokenizer, image processor)
    )
    clip_revision: str | None = None  # hub revision of clip_source; None = default branch
    encoders: str | None = (
        None  # reuse this bundle's encoders (encoders-only or complete) instead of exporting clip_source
    )
    training_posts: str | None = (
        None  # labelled posts Parquet (post_id, text, image, split, label, t_label, v_label, query)
    )
    features: str | None = None  # or a features Parquet already embedded with the same encoders
    checkpoint: str | None = None  # or a trained checkpoint folder: no training, export it
    labels: str | None = None  # comma-separated class names in label order; None = the features' metadata
    train_config: dict = dataclasses.field(
        default_factory=dict
    )  # ctmwa-train --config ({"model": {...}, "training": {...}})
    epochs: int | None = None  # ctmwa-train --epochs; None = the training default (20)
    seed: int | None = None  # ctmwa-train --seed; None = the training default (1111)
    calibrate: bool = False  # fit a softmax temperature on the features' valid split, so confidence means what it says
    torch_threads: int | None = None  # torch threads while training; None = torch's default (every core)
    make_current: bool = True  # move CURRENT to the new version once it is published
    smoke_rows: int = 40  # generated posts scored by `validate` (plus the bad rows)

    def __post_init__(self) -> None:
        given = [name for name in ("training_posts", "features", "checkpoint") if getattr(self, name)]
        if len(given) != 1:
            raise ReleaseError(
                f"give exactly one of training_posts (train on labelled posts), features (train on embedded posts) or "
                f"checkpoint (export without training); got {given or 'none'}"
            )
        if self.calibrate and self.checkpoint:
            raise ReleaseError(
                "calibrate needs the training features: give training_posts or features, not a checkpoint"
            )
        if not isinstance(self.train_config, dict):
            raise ReleaseError(f"train_config must be a JSON object, got {type(self.train_config).__name__}")

    @property
    def trains(self) -> bool:
        """Whether this release trains a model (else it exports the given checkpoint)."""
        return not self.checkpoint

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ReleaseConfig:
        """From a DAG run's params: unknown keys are ignored, models_root falls back to the settings (CTMWA_MODELS_ROOT)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in params.items() if k in names and v is not None and v != ""}
        values["models_root"] = values.get("models_root") or Settings.load().models_root
        return cls(**values)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def work_root(models_root: str) -> Path:
    """Where a release's work files go: {models_root}/.staging/ on a filesystem; with the models root in an object
    store (ONNX export and training write local files), CTMWA_RELEASE_WORK_ROOT, else a folder in the temp dir: the
    export DAG's tasks then need that folder in common (one machine, or a shared mount)."""
    if "://" in models_root and not models_root.startswith("file://"):
        return Path(os.environ.get(ENV_WORK_ROOT) or Path(tempfile.gettempdir()) / "ctmwa-release")
    return Path(models_root) / STAGING


def prepare(params: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """Check the release inputs exist and make the run's work folder; returns {"work_dir", "config"} for the next steps."""
    config = ReleaseConfig.from_params(params)
    for name in ("training_posts", "features", "checkpoint", "encoders"):
        value = getattr(config, name)
        if value and "://" not in value and not Path(value).exists():
            raise ReleaseError(f"{name} {value!r} does not exist")
    work = work_root(config.models_root) / _safe(run_id)
    work.mkdir(parents=True, exist_ok=True)
    logger.info(
        "release work folder %s; %s",
        work,
        "training on " + (config.training_posts or config.features or "")
        if config.trains
        else f"exporting checkpoint {config.checkpoint}",
    )
    return {"work_dir": str(work), "config": dataclasses.asdict(config)}


def _config(release: Mapping[str, Any]) -> ReleaseConfig:
    return ReleaseConfig(**release["config"])


def export_encoders(release: Mapping[str, Any]) -> str:
    """CLIP -> encoders-only bundle in the work folder (replaced if a failed try left one); or, when the release names
    an `encoders` bundle, that bundle's encoders (a new head on the same encoders: features made with them stay valid)."""
    config = _config(release)
    out = Path(release["work_dir"]) / "encoders"
    if out.exists():
        shutil.rmtree(out)
    if config.encoders:
        return str(encoders_only(config.encoders, out).root)
    from ctmwa_export.assemble import export_encoders as export
    from ctmwa_export.encoders import EncoderExportConfig

    bundle = export(
        EncoderExportConfig(source=config.clip_source, revision=config.clip_revision, out_dir=out, overwrite=True)
    )
    return str(bundle.root)


def encoders_only(bundle_dir: str | Path, out_dir: str | Path):
    """An encoders-only bundle at out_dir with the encoders, tokenizer and preprocessing of a bundle (verified first).
    Its model version equals that of the encoders bundle the source was made from."""
    from ctmwa_batch.model import bundle as layout

    encoders = layout.write_encoders_only(layout.load_bundle(bundle_dir), out_dir)
    logger.info("reusing the encoders of %s (encoders version %s)", bundle_dir, encoders.model_version)
    return encoders


def features(release: Mapping[str, Any], encoders_dir: str) -> str | None:
    """The features Parquet training reads: the posts embedded with these encoders, or the given file (checked to
    come from encoders of the same version); None when the release exports a given checkpoint."""
    import pyarrow.parquet as pq

    from ctmwa_batch.model.bundle import load_bundle
    from ctmwa_batch.scoring.embed import embed_posts

    config = _config(release)
    if not config.trains:
        return None
    encoders = load_bundle(encoders_dir)
    if config.features:
        made_by = (pq.read_schema(config.features).metadata or {}).get(b"ctmwa_batch.scoring.embed")
        version = json.loads(made_by).get("model_version") if made_by else None
        if version is not None and version != encoders.model_version:
            raise ReleaseError(
                f"features {config.features!r} were embedded with encoders {version}, but this release exported "
                f"{encoders.model_version} from {config.clip_source!r}; give training_posts instead so they are re-embedded"
            )
        if version is None:
            logger.warning(
                "features %s do not say which encoders made them; make sure they are %s's",
                config.features,
                config.clip_source,
            )
        return config.features
    out = Path(release["work_dir"]) / "features.parquet"
    stats = embed_posts(encoders_dir, config.training_posts, out, device="auto")
    logger.info(
        "embedded %d training posts (%d with text, %d with image)", stats["rows"], stats["has_text"], stats["has_image"]
    )
    return str(out)


def train(release: Mapping[str, Any], features_path: str | None) -> str:
    """Train on the features into the work folder (`ctmwa_training.train`); or the given checkpoint when the release does not train."""
    import ctmwa_training
    from ctmwa_training.meta import TrainConfig

    config = _config(release)
    if not config.trains:
        return str(config.checkpoint)
    out = Path(release["work_dir"]) / "checkpoint"
    if out.exists():
        shutil.rmtree(out)  # a failed try's partial checkpoint
    unknown = sorted(set(config.train_config) - {"model", "training"})
    if unknown:
        raise ReleaseError(f"train_config has keys {unknown}; expected 'model' and/or 'training' sections")
    values = dict(config.train_config.get("training", {}))
    if config.epochs is not None:
        values["epochs"] = config.epochs
    if config.seed is not None:
        values["seed"] = config.seed
    train_config = TrainConfig.from_dict(values, where="train_config.training")
    labels = [s.strip() for s in config.labels.split(",")] if config.labels else None
    logger.info("training on %s into %s (%s)", features_path, out, train_config)
    metrics = ctmwa_training.train(
        features_path,
        out,
        train_config,
        model=config.train_config.get("model"),
        labels=labels,
        threads=config.torch_threads,
    )
    logger.info(
        "trained: best epoch %s, test accuracy %s, weighted F1 %s",
        metrics.get("best_epoch"),
        metrics.get("test_accuracy"),
        metrics.get("test_f1_weighted"),
    )
    return str(out)


def export_head(
    release: Mapping[str, Any], checkpoint_dir: str, encoders_dir: str, features_path: str | None = None
) -> str:
    """The checkpoint's head -> head.onnx beside a copy of the encoders: the complete bundle (parity-validated);
    with `calibrate`, a temperature fitted on the features' valid split goes into the graph."""
    from ctmwa_export.assemble import export_head as export
    from ctmwa_export.head import HeadExportConfig

    config = _config(release)
    out = Path(release["work_dir"]) / "bundle"
    if out.exists():
        shutil.rmtree(out)
    head_config = (
        HeadExportConfig(calibrate=True, features=Path(features_path))
        if config.calibrate and features_path
        else HeadExportConfig()
    )
    export(checkpoint_dir, encoders_dir, out, head_config)
    return str(out)


def validate(release: Mapping[str, Any], bundle_dir: str) -> dict[str, Any]:
    """Verify the bundle (checksums, every file a scorer needs) and score generated posts with it through the runtime
    scorer: every input row must come back once, bad rows with a status, good rows with one of the bundle's labels."""
    import pyarrow.parquet as pq

    from ctmwa_batch.model.bundle import ENCODER_FILES, HEAD, load_bundle
    from ctmwa_batch.scoring import job
    from ctmwa_export import smoke

    smoke_rows = _config(release).smoke_rows
    bundle = load_bundle(bundle_dir)
    bundle.require(*ENCODER_FILES, HEAD)
    with tempfile.TemporaryDirectory(prefix="ctmwa-validate-") as tmp:
        lake = smoke.write_sample(Path(tmp) / "posts" / "dt=2000-01-01", rows=smoke_rows)
        scored = job.score_partition(lake["posts"], f"{tmp}/scores", bundle_dir, {"device": "auto"})
        scores = pq.read_table(scored["output_dir"]).to_pylist()
    problems = []
    if len(scores) != lake["rows"]:
        problems.append(f"{lake['rows']} posts in, {len(scores)} score rows out")
    labels = set(bundle.labels or [])
    bad_sentiment = {r["sentiment"] for r in scores if r["sentiment"] is not None} - labels
    if bad_sentiment:
        problems.append(f"sentiments {sorted(bad_sentiment)} are not the bundle's labels {sorted(labels)}")
    if not any(r["status"] == "ok" for r in scores):
        problems.append("no generated post scored ok")
    if problems:
        raise ReleaseError(f"bundle {bundle_dir} failed the smoke score: " + "; ".join(problems))
    statuses: dict[str, int] = {}
    for r in scores:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    result = {
        "model_version": bundle.model_version,
        "labels": bundle.labels,
        "files": sorted(bundle.files),
        "smoke": {"rows": len(scores), "by_status": statuses},
        "training_metrics": {k: v for k, v in bundle.training_metrics.items() if not isinstance(v, (list, dict))},
    }
    logger.info("bundle %s is valid: %s", bundle.model_version, json.dumps(result["smoke"]))
    return result


def publish(release: Mapping[str, Any], bundle_dir: str) -> dict[str, Any]:
    """Publish the bundle under the models root (and make it current unless told not to); then drop the work folder."""
    from ctmwa_batch.model import registry

    config = _config(release)
    result = registry.publish(bundle_dir, config.models_root, make_current=config.make_current)
    shutil.rmtree(release["work_dir"], ignore_errors=True)
    logger.info(
        "published %s at %s (current: %s, previous: %s)",
        result["model_version"],
        result["bundle_dir"],
        result["current"],
        result["previous"],
    )
    return result


def release(config: ReleaseConfig, run_id: str = "manual") -> dict[str, Any]:
    """Every step in a row, without Airflow; returns publish's result plus the validation."""
    state = prepare(dataclasses.asdict(config), run_id)
    encoders = export_encoders(state)
    features_path = features(state, encoders)
    checkpoint = train(state, features_path)
    bundle = export_head(state, checkpoint, encoders, features_path)
    validation = validate(state, bundle)
    return {**publish(state, bundle), "validation": validation}


def main(argv: list[str] | None = None) -> int:
    """`python -m ctmwa_export.release`: a release without Airflow (the ctmwa_export_model DAG's steps in a row)."""
    parser = argparse.ArgumentParser(
        prog="python -m ctmwa_export.release", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-root", required=True)
    parser.add_argument("--clip-source", default=DEFAULT_CLIP)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--training-posts")
    group.add_argument("--features")
    group.add_argument("--checkpoint")
    parser.add_argument("--labels")
    parser.add_argument("--train-config", type=json.loads, default={})
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--no-current", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ReleaseConfig(
            models_root=args.models_root,
            clip_source=args.clip_source,
            training_posts=args.training_posts,
            features=args.features,
            checkpoint=args.checkpoint,
            labels=args.labels,
            train_config=args.train_config,
            epochs=args.epochs,
            make_current=not args.no_current,
        )
        print(json.dumps(release(config), indent=2))
    except CtmwaError as e:
        print(f"ctmwa_export.release: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
