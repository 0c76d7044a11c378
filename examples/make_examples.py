"""Draw the app's example images: synthetic shapes (training/synthetic.py) that the demo model
captions correctly.

    python examples/make_examples.py [--config training/demo.json]

Images come from a seed the demo model was not trained on. With the demo model present, only
images it captions exactly right (one of the image's references, word for word, with beam
search width 3) are kept. ``examples/examples.json`` maps each file to its references, the
canonical caption first.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from imcap_hub.files import atomic_write_json  # noqa: E402
from training.synthetic import SyntheticConfig, generate  # noqa: E402

DEMO_RUN_CONFIG = HERE.parent / "training" / "demo.json"
SEED = 20261123  # not a training seed: the examples are images the model has not seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config",
        type=Path,
        default=DEMO_RUN_CONFIG if DEMO_RUN_CONFIG.exists() else None,
        help="the demo model's run config (its dataset.synthetic) or a SyntheticConfig JSON",
    )
    p.add_argument("--count", type=int, default=4, help="how many examples")
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)

    config = SyntheticConfig(image_format="png")
    if args.config:
        data = json.loads(args.config.read_text())
        data = data.get("dataset", {}).get("synthetic", data)
        config = SyntheticConfig.from_dict(data)
    config = replace(config, n_images=200, seed=SEED, image_format="png")

    model = None
    try:
        from imcap_hub import ImageCaptioner
        from imcap_hub.demo import DEMO_MODEL_DIR, demo_model_available

        if demo_model_available():
            model = ImageCaptioner.from_pretrained(DEMO_MODEL_DIR)
    except ImportError:
        pass

    chosen, seen_counts = [], {}
    for item in generate(config):
        k = len(item.shapes)
        if seen_counts.get(k, 0) >= max(1, args.count // config.max_shapes + 1):
            continue  # a mix of one, two, three shapes
        colours = frozenset(s.colour for s in item.shapes)
        if any(colours <= frozenset(s.colour for s in c.shapes) for c in chosen):
            continue  # variety: every example brings a colour the others lack
        if model is not None and model.caption(item.image)[0].text not in item.captions:
            continue
        chosen.append(item)
        seen_counts[k] = seen_counts.get(k, 0) + 1
        if len(chosen) == args.count:
            break

    for old in args.out.glob("*.png"):
        old.unlink()
    index = {}
    for item in sorted(chosen, key=lambda it: (len(it.shapes), it.index)):
        name = item.captions[0].replace(" ", "_") + ".png"
        item.image.save(args.out / name, optimize=True)
        index[name] = item.captions
    atomic_write_json(args.out / "examples.json", index, indent=1)
    checked = "checked against the demo model" if model is not None else "demo model absent"
    print(f"wrote {len(index)} examples to {args.out} ({checked})")
    for name, references in index.items():
        print(f"  {name}: {references[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
