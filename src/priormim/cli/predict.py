"""``priormim predict`` (vessel masks + overlays) and ``priormim evaluate`` (score a saved
segmenter on another data set, e.g. cross-data-set transfer)."""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported inside the functions: `priormim --help` stays light
    import numpy as np

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment vessels with a fine-tuned model: binary masks + red overlays",
        description="Writes <out>/masks/<name>.png (0/255, the image's own size) and <out>/overlays/<name>.png "
        "(the image with predicted vessels in red, a legend strip below it). "
        "Unreadable images are skipped and counted.",
    )
    p.add_argument("--model", type=Path, required=True, help="run folder of `priormim finetune seg` (or one of its seed<k>/)")
    p.add_argument("--images", type=Path, required=True, help="folder of images (or a folder with images/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace the masks/ and overlays/ already in --out")
    p.set_defaults(func=run_predict)

    e = subparsers.add_parser(
        "evaluate",
        help="score a fine-tuned segmenter on a labelled folder (metrics.json, results.md)",
        description="Every seed<k>/ model of a fine-tuning run is scored (mean ± std over seeds), or the one "
        "seed folder given.",
    )
    e.add_argument("--model", type=Path, required=True, help="run folder of `priormim finetune seg` (or one seed<k>/)")
    e.add_argument("--test", type=Path, required=True, help="folder with images/ + masks/")
    e.add_argument("--out", type=Path, help="output folder (default: <model>/eval_<test folder name>)")
    e.add_argument("--device", default="auto")
    e.add_argument("--overwrite", action="store_true", help="replace an evaluation already in --out")
    e.set_defaults(func=run_evaluate)


def overlay_rgb(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.6) -> np.ndarray:
    """Red vessels over the grey image: ``[H, W]`` in [0, 1] + ``bool [H, W]`` -> ``uint8 [H, W, 3]``."""
    import numpy as np

    grey = np.clip(image, 0, 1)[..., None].repeat(3, axis=-1)
    red = np.array([1.0, 0.0, 0.0])
    out = np.where(mask[..., None], (1 - alpha) * grey + alpha * red, grey)
    return np.round(out * 255).astype(np.uint8)


LEGEND_TEXT = "red: predicted vessel"


def with_legend(rgb: np.ndarray, *, text: str = LEGEND_TEXT) -> np.ndarray:
    """The overlay ``uint8 [H, W, 3]`` with a legend strip added below it (the image pixels
    stay where they are, so the overlay still lines up with the image): ``[H + h, W, 3]``."""
    import numpy as np
    from PIL import Image, ImageDraw

    h = 14
    strip = Image.new("RGB", (rgb.shape[1], h), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    draw.rectangle([2, 3, 10, h - 4], fill=(255, 0, 0))
    draw.text((14, 1), text, fill=(0, 0, 0))
    return np.concatenate([rgb, np.asarray(strip, dtype=np.uint8)], axis=0)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    from priormim.io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _image_folder(folder: Path) -> Path:
    if (folder / "images").is_dir() and not any(p.is_file() for p in folder.iterdir() if p.suffix):
        return folder / "images"
    return folder


PREDICT_MARKER = "predict.json"  # written last: --out holds a finished prediction


def _claim_predict_out(out: Path, *, inputs: list[tuple[str, Path]], overwrite: bool) -> None:
    """Never write masks over an input (e.g. the labelled folder's masks/); refuse an earlier
    prediction, or a masks/ folder that `predict` did not write, unless ``overwrite``."""
    from priormim.errors import UserError
    from priormim.io import is_image_file
    from priormim.outputs import check_writable_dir, refuse_input_overlap

    for sub in ("masks", "overlays"):
        refuse_input_overlap(out / sub, inputs)
    refuse_input_overlap(out, inputs, inside=False, around=False)
    if not overwrite:
        if (out / PREDICT_MARKER).is_file():
            raise UserError("already holds a prediction (predict.json); pass --overwrite to replace it, or choose "
                            "another --out", out)
        for sub in ("masks", "overlays"):
            if (out / sub).is_dir() and any(is_image_file(p) for p in (out / sub).iterdir()):
                raise UserError(f"{sub}/ already holds images that `priormim predict` did not write (e.g. ground-truth "
                                "masks); choose another --out, or pass --overwrite to replace them", out)
    check_writable_dir(out)


def run_predict(args: argparse.Namespace) -> int:
    from priormim.errors import UserError
    from priormim.io import atomic_write_bytes, list_images, read_gray, refuse_stem_clashes, write_png
    from priormim.training.finetune_seg import load_segmenter, predict_masks, resolve_device
    from priormim.training.loop import progress_bar

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    folder = _image_folder(args.images)
    files = list_images(folder)
    refuse_stem_clashes(files, folder)
    _claim_predict_out(args.out, inputs=[("--images", args.images), ("--images", folder), ("--model", args.model)],
                       overwrite=args.overwrite)
    device = resolve_device(args.device)
    model, cfg = load_segmenter(args.model, device=device)
    done = skipped = 0
    bar = progress_bar(len(files), "predict", enabled=True)
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        batch = []
        for f in chunk:
            try:
                batch.append((f, read_gray(f)))
            except UserError as exc:
                log.warning("skipped: %s", exc)
                skipped += 1
        if batch:
            masks = predict_masks(model, [im for _, im in batch], cfg, device=device, batch_size=args.batch_size)
            for (f, im), mask in zip(batch, masks):
                write_png(args.out / "masks" / f"{f.stem}.png", mask)
                _write_rgb(args.out / "overlays" / f"{f.stem}.png", with_legend(overlay_rgb(im, mask)))
                done += 1
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    summary = {"model": str(args.model), "images": str(folder), "predicted": done, "skipped_unreadable": skipped}
    atomic_write_bytes(args.out / PREDICT_MARKER, json.dumps(summary, indent=2).encode("utf-8"))
    print(f"predicted {done} image(s), skipped {skipped} unreadable -> {args.out / 'masks'}, {args.out / 'overlays'}")
    return 0 if done else 1


def run_evaluate(args: argparse.Namespace) -> int:
    from priormim.training.finetune_seg import evaluate_saved_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from priormim.outputs import claim_output, refuse_input_overlap

    out = args.out or (args.model / f"eval_{args.test.name}")
    refuse_input_overlap(out, [("--test", args.test), ("--model", args.model)], inside=False)
    claim_output(out, markers=("results.md", "metrics.json", "seed*/metrics.json"), owned=("results.csv", "seed*"),
                 overwrite=args.overwrite)
    result = evaluate_saved_model(args.model, args.test, out, device=args.device, progress=True)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"metrics -> {', '.join(str(d / 'metrics.json') for d in result['run_dirs'])}")
    return 0
