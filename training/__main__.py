"""python -m training prepare|train|evaluate|push|run CONFIG.json

The command line only: the parser, loading the config, errors and exit codes, and
``example-config``; the stages themselves are in ``training.stages``. Every command reads the
same run config (``training.run_config.RunConfig``) and works in its run folder
``<work_dir>/<name>/``; ``run`` does all four stages. ``--set KEY=VALUE`` changes
one setting for this call (``--set training.epochs=5``). A mistake the user can fix (a
missing dataset, a bad key, an unreachable Hub) is one ``error:`` line and exit status 2;
an interrupted command exits with 130 and resumes when run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from imcap_hub import startup
from imcap_hub.errors import ImcapError
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
    # Show, Attend and Tell (Xu et al. 2015) as far as it fits: soft attention over ResNet50's
    # 7x7x2048 grid (the paper: VGG's 14x14x512), attention and LSTM of 512, the paper's
    # dropout on the deep output, lambda = 1 rescaled to imcap's per-word mean loss, Adam.
    "flickr8k-attention": {
        "name": "resnet50-attention-flickr8k",
        "dataset": {"name": "Flickr8k", "path": "data/flickr8k", "layout": "auto"},
        "vocab": {"min_count": 5, "max_length": 30},
        "model": {
            "encoder": {
                "architecture": "resnet50",
                "weights": "imagenet",
                "image_size": 224,
                "features": "spatial",
            },
            "decoder": {
                "kind": "attention",
                "embedding_dim": 512,
                "units": 512,
                "attention_dim": 512,
                "dropout": 0.5,
            },
        },
        "features": {"batch_size": 32, "runtime": "auto"},
        "training": {
            "epochs": 30,
            "batch_size": 64,
            "learning_rate": 0.0004,
            "clipnorm": 5.0,
            "patience": 3,
            "attention_penalty": 0.1,
        },
        "evaluation": {"split": "test", "decodings": ["greedy", "beam-3"]},
        "publish": {"repo_id": None},
    },
    # COCO 2014 with Karpathy's split (dataset_coco.json: 113,287 training images, "restval"
    # included, 5,000 val, 5,000 test). The path names the file, not its folder: Karpathy's
    # caption_datasets.zip also holds dataset_flickr8k.json and dataset_flickr30k.json, and a
    # folder would read every dataset_*.json in it. The images go next to it as the file's
    # filepath/filename say: data/coco/train2014/ and data/coco/val2014/ (COCO's 2014 zips).
    # Show and Tell's sizes (embedding and LSTM 512). COCO's captions are short (about 10
    # words on average, as commonly quoted): vocab.max_length 20 drops only the long tail from
    # training, and prepare.json counts what it dropped (vocab.dropped_too_long).
    "coco": {
        "name": "resnet50-coco",
        "dataset": {"name": "COCO", "path": "data/coco/dataset_coco.json", "layout": "coco"},
        "vocab": {"min_count": 5, "max_length": 20},
        "model": {
            "encoder": {"architecture": "resnet50", "weights": "imagenet", "image_size": 224},
            "decoder": {"embedding_dim": 512, "units": 512, "dropout": 0.5},
        },
        "features": {"batch_size": 32, "runtime": "auto"},
        "training": {
            "epochs": 20,
            "batch_size": 64,
            "learning_rate": 0.0005,
            "clipnorm": 5.0,
            "patience": 3,
        },
        "evaluation": {"split": "test", "decodings": ["greedy", "beam-3"]},
        "publish": {"repo_id": None},
    },
    # The attention decoder on COCO: flickr8k-attention's model on coco's data. Its spatial
    # feature cache is 7x7x2048 float32 per image: about 47 GB for the 118,287 train and val
    # images (memory-mapped: read batch by batch, not held in memory).
    "coco-attention": {
        "name": "resnet50-attention-coco",
        "dataset": {"name": "COCO", "path": "data/coco/dataset_coco.json", "layout": "coco"},
        "vocab": {"min_count": 5, "max_length": 20},
        "model": {
            "encoder": {
                "architecture": "resnet50",
                "weights": "imagenet",
                "image_size": 224,
                "features": "spatial",
            },
            "decoder": {
                "kind": "attention",
                "embedding_dim": 512,
                "units": 512,
                "attention_dim": 512,
                "dropout": 0.5,
            },
        },
        "features": {"batch_size": 32, "runtime": "auto"},
        "training": {
            "epochs": 20,
            "batch_size": 64,
            "learning_rate": 0.0004,
            "clipnorm": 5.0,
            "patience": 3,
            "attention_penalty": 0.1,
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

    p = add("prepare", "read the dataset, build the vocabulary, cache encoder features")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="cache only shard I of N of the images (several processes or machines share "
        "the work; the last to finish merges the cache). Default under "
        "training.strategy=multiworker: this task's shard of TF_CONFIG",
    )
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


def _run_stage(config: RunConfig, args) -> None:
    """The stage ``args.command`` names, with its options."""
    from training import stages

    progress = args.progress
    if args.command == "prepare":
        stages.stage_prepare(config, progress=progress, shard=args.shard)
    elif args.command == "train":
        stages.stage_train(config, fresh=args.fresh, progress=progress)
    elif args.command == "evaluate":
        stages.stage_evaluate(
            config,
            progress=progress,
            model_dir=args.model,
            split=args.split,
            decodings=args.decodings,
            max_images=args.max_images,
        )
    elif args.command == "push":
        stages.stage_push(config, repo_id=args.repo_id, token=args.token, private=args.private)
    elif args.command == "run":
        stages.stage_run(
            config,
            fresh=args.fresh,
            progress=progress,
            repo_id=args.repo_id,
            token=args.token,
            private=args.private,
        )
    else:  # pragma: no cover - argparse only lets the commands above through
        raise AssertionError(args.command)


def _evaluate_folder(args) -> None:
    from training import stages

    if not args.model or not args.dataset:
        raise RunConfigError("evaluate needs a run config, or both --model and --dataset")
    stages.evaluate_folder(
        args.model,
        args.dataset,
        layout=args.layout,
        split=args.split,
        decodings=args.decodings,
        max_images=args.max_images,
        out=args.out,
        progress=args.progress,
    )


def _load_config(args) -> RunConfig:
    config = RunConfig.load(args.config)
    if args.overrides:
        config = config.with_overrides(args.overrides)
    return config


def _quiet_tensorflow() -> None:
    """Import TensorFlow now, its start-up noise filtered (imcap_hub.startup): training's modules
    import it lazily and directly, so the first import must be this one."""
    startup.quiet_tensorflow()
    startup.import_tensorflow()


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
            _quiet_tensorflow()
            _evaluate_folder(args)
            return 0
        config = _load_config(args)
        _quiet_tensorflow()  # after the config: a wrong one is refused without waiting for it
        config.paths.root.mkdir(parents=True, exist_ok=True)
        config.save(config.paths.config_file)
        _run_stage(config, args)
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
