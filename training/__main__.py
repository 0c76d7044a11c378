"""python -m training prepare|train|evaluate|push|run CONFIG.json

Every command reads the same run config (``training.run_config.RunConfig``) and works in its
run folder ``<work_dir>/<name>/``; ``run`` does all four stages. ``--set KEY=VALUE`` changes
one setting for this call (``--set training.epochs=5``). A mistake the user can fix (a
missing dataset, a bad key, an unreachable Hub) is one ``error:`` line and exit status 2;
an interrupted command exits with 130 and resumes when run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imcap_hub.errors import ImcapError
from imcap_hub.files import atomic_write_json
from training.datasets import SPLITS
from training.run_config import RunConfig, RunConfigError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

EXAMPLES: dict[str, dict[str, Any]] = {
    "flickr8k": {
        "name": "resnet50-flickr8k",
        "dataset": {"name": "Flickr8k", "path": "data/flickr8k", "layout": "auto"},
        "vocab": {"min_count": 5, "max_length": 30},
        "model": {
            "encoder": {"architecture": "resnet50", "weights": "imagenet", "image_size": 224},
            "decoder": {"embedding_dim": 256, "units": 512, "dropout": 0.5},
        },
        "features": {"batch_size": 32, "runtime": "auto"},
        "training": {
            "epochs": 30,
            "batch_size": 64,
            "learning_rate": 0.0005,
            "clipnorm": 5.0,
            "patience": 3,
        },
        "evaluation": {"split": "test", "decodings": ["greedy", "beam-3"]},
        "publish": {"repo_id": None},
    },
    "synthetic": {
        "name": "shapes",
        "dataset": {
            "synthetic": {"n_images": 2000, "image_size": 64, "max_shapes": 2},
            "synthetic_layout": "flickr8k",
        },
        "vocab": {"min_count": 1, "max_length": 20},
        "model": {
            "encoder": {
                "architecture": "tiny_resnet",
                "weights": "repo",
                "image_size": 64,
                "preprocessing": "unit",
                "widths": [16, 32, 64],
            },
            "decoder": {"embedding_dim": 64, "units": 128, "dropout": 0.1},
        },
        "training": {"epochs": 20, "batch_size": 32, "train_encoder": True},
    },
}


def _log(message: str) -> None:
    print(message, flush=True)


# --- stage bookkeeping ------------------------------------------------------------------------


def _record_stage(config: RunConfig, stage: str, seconds: float, **extra: Any) -> None:
    path = config.paths.stages
    stages = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    stages[stage] = {
        "seconds": round(seconds, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    atomic_write_json(path, stages, sort_keys=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def training_info(config: RunConfig) -> dict[str, Any]:
    """What the model card says about the run (see ``model_card/render.py``)."""
    paths = config.paths
    prep = _read_json(paths.prepare_info) or {}
    tr = _read_json(paths.train_info) or {}
    stages = _read_json(paths.stages) or {}
    ds = config.dataset
    history = tr.get("history") or {}
    n_epochs = max((len(v) for v in history.values()), default=0)
    rows = []
    for i in range(n_epochs):
        row: dict[str, Any] = {"epoch": i + 1}
        for key in ("loss", "token_accuracy", "val_loss", "val_token_accuracy"):
            if key in history and i < len(history[key]):
                row[key] = history[key][i]
        seconds = tr.get("epoch_seconds") or []
        if i < len(seconds):
            row["seconds"] = round(seconds[i], 1)
        rows.append(row)
    prep_ds = prep.get("dataset") or {}
    dataset = {
        "name": ds.display_name,
        "layout": prep_ds.get("layout", ds.layout),
        "synthetic": ds.synthetic is not None,
    }
    if ds.url:
        dataset["url"] = ds.url
    if ds.license:
        dataset["license"] = ds.license
    if ds.synthetic is not None:
        dataset["synthetic_config"] = ds.synthetic
    t = config.training
    return {
        "name": config.publish.model_name or config.name,
        "dataset": dataset,
        "splits": prep.get("splits"),
        "vocabulary": prep.get("vocab"),
        "training": {
            "epochs": t.epochs,
            "epochs_run": tr.get("epochs_run"),
            "best_epoch": tr.get("best_epoch"),
            "stopped_early": tr.get("stopped_early"),
            "batch_size": t.batch_size,
            "learning_rate": t.learning_rate,
            "lr_schedule": t.lr_schedule,
            "clipnorm": t.clipnorm,
            "patience": t.patience,
            "train_encoder": t.train_encoder,
            "strategy": tr.get("strategy"),
            "history": rows,
            # The card is written before the push it describes: a push time would be the last one's.
            "seconds": {
                k: v.get("seconds")
                for k, v in stages.items()
                if isinstance(v, dict) and k != "push"
            },
        },
        "features": prep.get("cache"),
        "seed": config.seed,
        "hardware": tr.get("hardware"),
        "config": config.to_dict(),
    }


# --- stages -----------------------------------------------------------------------------------


def stage_prepare(config: RunConfig, args) -> None:
    from training.prepare import prepare

    start = time.perf_counter()
    prepare(config, progress=args.progress, log=_log)
    _record_stage(config, "prepare", time.perf_counter() - start)


def stage_train(config: RunConfig, args) -> None:
    from training.train import train_stage

    start = time.perf_counter()
    info = train_stage(config, fresh=args.fresh, progress=args.progress, log=_log)
    _record_stage(
        config,
        "train",
        time.perf_counter() - start,
        epochs_run=info["epochs_run"],
        best_epoch=info["best_epoch"],
    )


def _evaluate(model, table, split, decodings, max_images, progress) -> dict[str, Any]:
    from training.evaluate import evaluate

    return evaluate(
        model,
        table,
        split=split,
        decodings=tuple(decodings),
        max_images=max_images,
        progress=progress,
    )


def _print_scores(metrics: dict[str, Any]) -> None:
    for label, scores in (metrics.get("decodings") or {}).items():
        text = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, (int, float)))
        _log(f"{label}: {text}")


def stage_evaluate(config: RunConfig, args) -> None:
    from imcap_hub.model import ImageCaptioner
    from training.evaluate import write_metrics
    from training.prepare import load_prepared

    start = time.perf_counter()
    table, _, _ = load_prepared(config)
    model_dir = Path(args.model) if getattr(args, "model", None) else config.paths.trained
    if not (model_dir / "config.json").exists():
        raise RunConfigError(
            f"no trained model in {model_dir}: run `python -m training train` with this config first"
        )
    model = ImageCaptioner.from_pretrained(model_dir, runtime=config.features.runtime)
    ev = config.evaluation
    split = getattr(args, "split", None) or ev.split
    decodings = getattr(args, "decodings", None) or ev.decodings
    max_images = getattr(args, "max_images", None) or ev.max_images
    _log(f"evaluating {model_dir} on the {split} split ({', '.join(decodings)})")
    metrics = _evaluate(model, table, split, decodings, max_images, args.progress)
    write_metrics(metrics, config.paths.metrics)
    _print_scores(metrics)
    _log(f"metrics in {config.paths.metrics}")
    _record_stage(config, "evaluate", time.perf_counter() - start, split=split)


def stage_push(config: RunConfig, args) -> None:
    from imcap_hub.model import ImageCaptioner
    from training.evaluate import read_metrics
    from training.publish import publish

    start = time.perf_counter()
    paths = config.paths
    if not (paths.trained / "config.json").exists():
        raise RunConfigError(
            f"no trained model in {paths.trained}: run `python -m training train` with this config first"
        )
    model = ImageCaptioner.from_pretrained(paths.trained, runtime=config.features.runtime)
    metrics = read_metrics(paths.metrics) if paths.metrics.exists() else None
    if metrics is None:
        _log("note: no metrics.json (run `evaluate` first); the card will say 'not evaluated'")
    repo_id = getattr(args, "repo_id", None) or config.publish.repo_id
    private = True if getattr(args, "private", False) else config.publish.private
    result = publish(
        model,
        paths.model,
        metrics=metrics,
        training_info=training_info(config),
        repo_id=repo_id,
        token=getattr(args, "token", None),
        private=private,
    )
    _record_stage(config, "push", time.perf_counter() - start, repo_id=result.repo_id)
    _log(f"model folder: {result.out_dir} ({', '.join(result.files)})")
    if result.repo_id:
        _log(f"pushed to {result.repo_url} (commit {result.commit_hash})")


def stage_run(config: RunConfig, args) -> None:
    start = time.perf_counter()
    stage_prepare(config, args)
    stage_train(config, args)
    if config.evaluation.enabled:
        stage_evaluate(config, args)
    stage_push(config, args)
    _log(f"run {config.name} done in {time.perf_counter() - start:.1f} s: {config.paths.model}")


def evaluate_folder(args) -> None:
    """``evaluate --model DIR --dataset ROOT``: score any model folder, no run needed."""
    from imcap_hub.model import ImageCaptioner
    from training.datasets import read_dataset
    from training.evaluate import write_metrics

    root = Path(args.dataset)
    if not root.exists():
        raise RunConfigError(f"dataset {root} does not exist")
    try:
        table, report = read_dataset(args.layout, root)
    except (OSError, ValueError) as e:
        raise RunConfigError(f"cannot read the dataset at {root}: {e}") from None
    _log(report.summary())
    model = ImageCaptioner.from_pretrained(args.model)
    decodings = args.decodings or ["greedy", "beam-3"]
    metrics = _evaluate(
        model, table, args.split or "test", decodings, args.max_images, args.progress
    )
    _print_scores(metrics)
    if args.out:
        write_metrics(metrics, args.out)
        _log(f"metrics in {args.out}")
    else:
        print(json.dumps(metrics, indent=2))


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, evaluate and publish an imcap captioner from one JSON run config.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, config_required: bool = True) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, description=help)
        if config_required:
            p.add_argument("config", help="the run config (JSON)")
        else:
            p.add_argument("config", nargs="?", help="the run config (JSON)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="change one setting, e.g. --set training.epochs=5 (repeatable)",
        )
        bar = p.add_mutually_exclusive_group()
        bar.add_argument(
            "--progress",
            dest="progress",
            action="store_true",
            default=None,
            help="show progress bars (default: when stderr is a terminal)",
        )
        bar.add_argument(
            "--no-progress", dest="progress", action="store_false", help="no progress bars"
        )
        return p

    add("prepare", "read the dataset, build the vocabulary, cache encoder features")
    p = add("train", "fit the model (resumes from the last checkpoint)")
    p.add_argument("--fresh", action="store_true", help="ignore checkpoints, start over")
    p = add("evaluate", "score a model on a split (coco-caption metrics)", config_required=False)
    p.add_argument("--model", help="model folder (default: the run's trained model)")
    p.add_argument("--dataset", help="without a config: the dataset folder to score on")
    p.add_argument("--layout", default="auto", help="with --dataset: its layout (default auto)")
    p.add_argument("--split", choices=SPLITS)
    p.add_argument("--decodings", type=lambda s: [d for d in s.split(",") if d])
    p.add_argument("--max-images", type=int)
    p.add_argument("--out", help="with --dataset: write metrics.json here")
    for name, help in (
        ("push", "write the model folder with its card; push it to the Hub with a repo id"),
        ("run", "prepare, train, evaluate and push, from one config"),
    ):
        p = add(name, help)
        p.add_argument("--repo-id", help="Hub repo to push to (overrides publish.repo_id)")
        p.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached login)")
        p.add_argument("--private", action="store_true", help="create the repo private")
        if name == "run":
            p.add_argument("--fresh", action="store_true", help="ignore training checkpoints")
    p = commands.add_parser(
        "example-config",
        help="print an example run config",
        description="print an example run config",
    )
    p.add_argument("kind", choices=sorted(EXAMPLES), nargs="?", default="flickr8k")
    return parser


STAGES = {
    "prepare": stage_prepare,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "push": stage_push,
    "run": stage_run,
}


def _load_config(args) -> RunConfig:
    config = RunConfig.load(args.config)
    if args.overrides:
        config = config.with_overrides(args.overrides)
    return config


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    if args.command == "example-config":
        print(json.dumps(EXAMPLES[args.kind], indent=2))
        return 0
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    try:
        if args.command == "evaluate" and args.config is None:
            if not args.model or not args.dataset:
                raise RunConfigError("evaluate needs a run config, or both --model and --dataset")
            evaluate_folder(args)
            return 0
        config = _load_config(args)
        config.paths.root.mkdir(parents=True, exist_ok=True)
        config.save(config.paths.config_file)
        STAGES[args.command](config, args)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImcapError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
