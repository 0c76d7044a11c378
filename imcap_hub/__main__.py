"""python -m imcap_hub caption IMAGE_OR_FOLDER... --model REPO_OR_DIR [--output captions.jsonl]"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from . import DecodeOptions, ImageCaptioner, ImcapError, startup
from .caption_files import format_rows, read_done, table_format
from .encoder import RUNTIMES
from .files import atomic_write
from .inference import DECODINGS
from .pipeline import caption_batches

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

logger = logging.getLogger("imcap_hub.__main__")  # also when run as __main__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m imcap_hub", description="Caption images.")
    commands = parser.add_subparsers(dest="command", required=True)
    cap = commands.add_parser("caption", help="caption one or more images")
    cap.add_argument("images", nargs="+", help="image files, or folders of them (searched whole)")
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
    cap.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="encoder runtime: auto (the fastest exact one), fast (int8 or bf16 where they work, "
        "else as auto; says which it took), or one by name",
    )
    cap.add_argument("--json", action="store_true", help="print one JSON object per image")
    cap.add_argument(
        "--output",
        metavar="FILE",
        help="write file,caption,error rows to FILE (.csv or .jsonl) as they are done, with a "
        "progress bar, instead of printing them; images already in FILE are skipped (resume)",
    )
    cap.add_argument(
        "--batch-size", type=int, default=16, help="images per encoder call (default 16)"
    )
    cap.add_argument(
        "--quiet",
        action="store_true",
        help="no progress lines on stderr (warnings and errors still show)",
    )
    cap.add_argument(
        "--heatmaps",
        metavar="DIR",
        help="write one PNG per image into DIR: where the model looked for each word of the "
        "best caption (attention models only)",
    )
    return parser


def _write_heatmaps(folder: Path, paths: list[str], results: list, taken: set[str]) -> None:
    """One attention sheet per captioned image, named after the image (PNG); ``taken``: the
    names written so far (two images with one name in different folders)."""
    from .heatmaps import attention_sheet
    from .images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    for path, result in zip(paths, results):
        if result.error or not result.captions:
            continue
        stem = Path(path).stem
        name, n = f"{stem}.png", 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}.png"
        taken.add(name)
        best = result.captions[0]
        sheet = attention_sheet(load_image(path), best.attention, best.attention_labels)
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        atomic_write(folder / name, buffer.getvalue())


def image_paths(arguments: list[str]) -> tuple[list[str], list[str]]:
    """The images named on the command line (files as given; folders as the image files in them,
    by suffix, sorted, sub-folders too), and a one-line problem for each folder without any."""
    paths: list[str] = []
    problems: list[str] = []
    for argument in arguments:
        if not os.path.isdir(argument):
            paths.append(argument)  # a file, or a path whose problem is reported with the rest
            continue
        found = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(argument)
            for name in names
            if Path(name).suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            problems.append(f"'{argument}': a folder with no image files in it")
        paths += found
    return paths, problems


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def _table(path: str | None, fmt: str | None):
    """Appends rows to the caption table at ``path`` durably (each batch flushed and synced),
    with a header for a new CSV; None when the captions go to stdout."""
    if path is None:
        yield None
        return
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    cut = False  # a last row cut short by a crash: only the file's last byte says so
    if not new:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8", newline="") as f:
        if cut:
            f.write("\n")  # the cut row stays unreadable, on a line of its own; its image is redone

        def append(rows: list[dict[str, str]], header: bool = False) -> None:
            f.write(format_rows(rows, fmt, header=header))
            f.flush()
            os.fsync(f.fileno())

        if new and fmt == "csv":
            append([], header=True)
        yield append


class _Formatter(logging.Formatter):
    """Progress lines as they are; anything worse than INFO as ``warning: ...`` (the one
    ``error: ...`` line of a failure is the CLI's own)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


@contextlib.contextmanager
def _logging(quiet: bool):
    """stderr: imcap_hub's progress lines (INFO, unless ``quiet``) and every library's
    warnings; stdout stays for the captions."""
    root = logging.getLogger()
    if not root.handlers:  # as basicConfig: a caller's own configuration wins
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    package = logging.getLogger("imcap_hub")
    level = package.level
    package.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        package.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    startup.quiet_tensorflow()
    with _logging(args.quiet):
        return _caption(args)


def _caption(args: argparse.Namespace) -> int:
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
        if args.batch_size < 1:
            raise ImcapError(f"--batch-size must be at least 1, got {args.batch_size}")
        fmt = table_format(args.output) if args.output else None
        images, problems = image_paths(args.images)
        done = read_done(args.output) if args.output else set()
        todo = [path for path in images if path not in done]
        # What a library prints (Keras' download of the ImageNet weights) goes to stderr too.
        with contextlib.redirect_stdout(sys.stderr):
            model = ImageCaptioner.from_pretrained(
                args.model,
                revision=args.revision,
                token=args.token,
                local_files_only=args.offline,
                runtime=args.runtime,
            )
        options.validate(model.config)  # before any image: e.g. --heatmaps needs attention
    except ImcapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a model file that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 2
    if done:
        logger.info("%d of %d images are in %s already: skipped", len(done & set(images)), len(images), args.output)  # fmt: skip
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    failed, taken = len(problems), set()
    count = f"{len(todo)} image{'' if len(todo) == 1 else 's'}"
    show_bar = not args.quiet and (args.output is not None or len(todo) > args.batch_size)
    try:
        with (
            startup.step(logger, f"captioning {count}"),
            _table(args.output, fmt) as append,
            _progress(len(todo), show_bar) as bar,
        ):
            batches = list(_batches(todo, args.batch_size))
            captioned = caption_batches(model, batches, options)
            for batch in batches:
                with contextlib.redirect_stdout(sys.stderr):
                    results = next(captioned)
                if args.heatmaps:
                    _write_heatmaps(Path(args.heatmaps), batch, results, taken)
                failed += _report(batch, results, args.json, append)
                bar.update(len(batch))
    except OSError as e:
        where = "the heatmaps" if args.heatmaps else args.output
        print(f"error: cannot write {where}: {e}", file=sys.stderr)
        return 2
    except ImcapError as e:  # the encoder's runtime failed (a conversion, a quantisation)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


@contextlib.contextmanager
def _progress(total: int, show: bool):
    """A progress bar on stderr (tqdm, which huggingface_hub installs), or a silent stand-in."""
    from tqdm import tqdm

    with tqdm(total=total, unit="image", file=sys.stderr, disable=not show) as bar:
        yield bar


def _report(paths: list[str], results: list, as_json: bool, append) -> int:
    """Each image's caption: a row of the table (``append``), or a line on stdout; an image
    that failed gets its ``error:`` line on stderr either way. Returns how many failed. Lines go
    through tqdm.write, which keeps them off the progress bar's line."""
    from tqdm import tqdm

    def say(line: str, file=sys.stdout) -> None:
        tqdm.write(line, file=file)

    failed = 0
    rows = []
    for path, result in zip(paths, results):
        if result.error:
            failed += 1
            say(f"error: {result.error}", file=sys.stderr)
            rows.append({"file": path, "error": result.error})
            continue
        rows.append({"file": path, "caption": result.text})
        if append is not None:
            continue
        if as_json:
            record = result.to_dict()
            # As the app's /caption_details: milliseconds to 3 decimals (scores come rounded).
            record["timings_ms"] = {k: round(v, 3) for k, v in record["timings_ms"].items()}
            say(json.dumps({"image": path, **record}))
        elif len(result.captions) == 1:
            say(f"{path}\t{result.text}")
        else:
            for rank, cap in enumerate(result.captions, 1):
                say(f"{path}\t{rank}\t{cap.score:.3f}\t{cap.text}")
    if append is not None:
        append(rows)
    return failed


if __name__ == "__main__":
    sys.exit(main())
