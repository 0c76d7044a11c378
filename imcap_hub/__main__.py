"""python -m imcap_hub caption IMAGE... --model REPO_OR_DIR"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from pathlib import Path

from . import DecodeOptions, ImageCaptioner, ImcapError, predict_many
from .encoder import RUNTIMES
from .files import atomic_write
from .inference import DECODINGS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imcap_hub", description="Caption images.")
    commands = parser.add_subparsers(dest="command", required=True)
    cap = commands.add_parser("caption", help="caption one or more images")
    cap.add_argument("images", nargs="+", help="image files")
    cap.add_argument("--model", required=True, help="Hub repo id or local model folder")
    cap.add_argument("--revision", help="branch, tag or commit hash on the Hub")
    cap.add_argument("--token", help="Hub token (default: the cached login)")
    cap.add_argument("--offline", action="store_true", help="use only the local Hub cache")
    cap.add_argument("--decoding", choices=DECODINGS, default="beam")
    cap.add_argument("--beam-size", type=int, default=3)
    cap.add_argument("--num-captions", type=int, default=1)
    cap.add_argument("--max-length", type=int)
    cap.add_argument("--temperature", type=float, default=1.0)
    cap.add_argument("--top-p", type=float, default=1.0)
    cap.add_argument("--seed", type=int, default=0)
    cap.add_argument("--runtime", choices=RUNTIMES, default="auto", help="encoder runtime")
    cap.add_argument("--json", action="store_true", help="print one JSON object per image")
    cap.add_argument(
        "--heatmaps",
        metavar="DIR",
        help="write one PNG per image into DIR: where the model looked for each word of the "
        "best caption (attention models only)",
    )
    return parser


def _write_heatmaps(folder: Path, paths: list[str], results: list) -> list[Path]:
    """One attention sheet per captioned image, named after the image (PNG)."""
    from .heatmaps import attention_sheet
    from .images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    taken: set[str] = set()
    for path, result in zip(paths, results):
        if result.error or not result.captions:
            continue
        stem = Path(path).stem
        name, n = f"{stem}.png", 1
        while name in taken:  # two images with one name in different folders
            n += 1
            name = f"{stem}-{n}.png"
        taken.add(name)
        best = result.captions[0]
        sheet = attention_sheet(load_image(path), best.attention, best.attention_labels)
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        written.append(atomic_write(folder / name, buffer.getvalue()))
    return written


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        options = DecodeOptions(
            decoding=args.decoding,
            beam_size=args.beam_size,
            num_captions=args.num_captions,
            max_length=args.max_length,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            return_attention=bool(args.heatmaps),
        )
        model = ImageCaptioner.from_pretrained(
            args.model,
            revision=args.revision,
            token=args.token,
            local_files_only=args.offline,
            runtime=args.runtime,
        )
        results = predict_many(model, args.images, options)
    except ImcapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a model file that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.heatmaps:
        try:
            _write_heatmaps(Path(args.heatmaps), args.images, results)
        except OSError as e:  # only here: an OSError elsewhere is not about the heatmaps
            print(f"error: cannot write the heatmaps: {e}", file=sys.stderr)
            return 2
    failed = 0
    for path, result in zip(args.images, results):
        if result.error:
            failed += 1
            print(f"error: {result.error}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"image": path, **result.to_dict()}))
        elif len(result.captions) == 1:
            print(f"{path}\t{result.text}")
        else:
            for rank, cap in enumerate(result.captions, 1):
                print(f"{path}\t{rank}\t{cap.score:.3f}\t{cap.text}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
