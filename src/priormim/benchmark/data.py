"""Data of a bench run: synthetic angiograms, real segmentation folders, the pretraining pool.

Layout under ``<out>/data``::

    synthetic/{unlabelled,train,val,test}/images (+ masks/)   generated, deterministic by data seed
    pool/images/<source>__<file>                              links to every pretraining image
    pool/priors/vessel/                                       their vessel priors (cached)

A real folder (``images/`` + ``masks/``) is split once with
:func:`priormim.training.finetune_seg.fixed_split` (seed = the data seed); its train and val
images may join the pool, its test images never do.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from priormim.io import list_images

log = logging.getLogger(__name__)

# Vesselness and prior frame width: 20 px at DCA1's 300 px, scaled to other image sizes.
REFERENCE_BORDER, REFERENCE_SIZE = 20, 300


def vesselness_border(image_size: int) -> int:
    """Frame cleared by the vesselness threshold for images of this short side."""
    return max(2, round(REFERENCE_BORDER * image_size / REFERENCE_SIZE))


@dataclass(frozen=True)
class SegDataset:
    """One labelled data set the methods are fine-tuned and scored on.

    Synthetic sets have ``train``/``val``/``test`` folders; a real set has one ``root`` split
    by :func:`fixed_split` with ``split_seed``.
    """

    name: str
    kind: str  # "synthetic" or "real"
    image_size: int  # short side of its images (for the vesselness border)
    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    root: Path | None = None
    split_seed: int = 0
    split: dict[str, list[str]] = field(default_factory=dict)  # real sets: the fixed split

    def finetune_kwargs(self) -> dict:
        """The data arguments of :class:`SegFinetuneConfig` for this set."""
        if self.kind == "real":
            return {"data": self.root, "split_seed": self.split_seed}
        return {"train": self.train, "val": self.val, "test": self.test}

    def test_folder_and_names(self) -> tuple[Path, list[str] | None]:
        """Folder holding the test images and, for a real set, the test names in it."""
        if self.kind == "real":
            return self.root, list(self.split["test"])
        return self.test, None

    def test_samples(self) -> list:
        """The test images and masks in memory (:class:`SegSample` list)."""
        from priormim.data.readers import read_segmentation_folder
        from priormim.training.finetune_seg import load_samples

        folder, names = self.test_folder_and_names()
        pairs = read_segmentation_folder(folder, check_binary=False)
        if names is not None:
            pairs = [p for p in pairs if p.name in set(names)]
        return load_samples(pairs)


@dataclass
class BenchData:
    """Everything a run trains and scores on."""

    datasets: list[SegDataset]
    pool_images: Path
    pool_priors: Path
    pool_sources: dict[str, int]  # source -> number of pool images
    example_images: list[Path]  # synthetic pool images for the masking-frequency figure

    @property
    def pool_size(self) -> int:
        return sum(self.pool_sources.values())


def _short_side(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return min(im.size)
    except OSError:
        return REFERENCE_SIZE


def _ensure_synthetic(folder: Path, n: int, size: int, seed: int) -> None:
    from priormim.data.synth_xca import write_synthetic_xca

    images = folder / "images"
    have = sorted(images.glob("xca_*.png")) if images.is_dir() else []
    if len(have) == n and (folder / "masks").is_dir() and len(list((folder / "masks").glob("xca_*.png"))) == n:
        return
    if have:  # another size of set; start clean so no stale file lingers
        shutil.rmtree(folder)
    write_synthetic_xca(folder, n=n, size=size, seed=seed)


def make_synthetic(out: Path, *, size: int, counts: dict[str, int], data_seed: int) -> dict[str, Path]:
    """Write the synthetic sets (``unlabelled``, ``train``, ``val``, ``test``) under ``out``.

    Set ``k`` uses seed ``1000 * k + data_seed`` so sets never share an image and the same
    data seed always gives the same images.
    """
    folders = {}
    for k, role in enumerate(("unlabelled", "train", "val", "test")):
        folders[role] = out / role
        _ensure_synthetic(folders[role], counts[role], size, 1000 * k + data_seed)
    return folders


def _link(src: Path, dst: Path) -> None:
    """``dst`` -> ``src`` as a symlink, or a copy where links are not allowed."""
    if dst.is_symlink() or dst.exists():
        if dst.is_symlink() and Path(os.readlink(dst)) == src:
            return
        dst.unlink()
    try:
        dst.symlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def build_pool(pool_images: Path, sources: dict[str, list[Path]]) -> dict[str, int]:
    """Make ``pool_images`` hold exactly one link per source image, named ``<source>__<file>``.

    Returns the number of images per source.
    """
    pool_images.mkdir(parents=True, exist_ok=True)
    wanted: dict[str, Path] = {}
    for source, paths in sources.items():
        for p in paths:
            wanted[f"{source}__{p.name}"] = p.resolve()
    for existing in pool_images.iterdir():
        if existing.name not in wanted:
            existing.unlink()
    for name, src in wanted.items():
        _link(src, pool_images / name)
    return {s: len(p) for s, p in sources.items()}


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out


def prepare_data(
    out: Path,
    *,
    synth_size: int,
    counts: dict[str, int],
    data_seed: int,
    real: list[Path],
    unlabelled: list[Path],
    real_in_pool: bool = True,
    n_examples: int = 3,
    prior_device: str = "cpu",
) -> BenchData:
    """Generate / link / split everything under ``out`` (= ``<bench>/data``) and compute the
    pool's vessel priors (cached; only missing ones are computed)."""
    from priormim.data.readers import read_segmentation_folder
    from priormim.priors.cache import ensure_vessel_priors
    from priormim.training.finetune_seg import fixed_split

    synth = make_synthetic(out / "synthetic", size=synth_size, counts=counts, data_seed=data_seed)
    taken = {"synthetic"}
    datasets = [SegDataset(name="synthetic", kind="synthetic", image_size=synth_size,
                           train=synth["train"], val=synth["val"], test=synth["test"])]
    pool_sources: dict[str, list[Path]] = {"synthetic": list_images(synth["unlabelled"] / "images")}
    for folder in real:
        folder = Path(folder)
        pairs = read_segmentation_folder(folder, check_binary=False)
        split = fixed_split([p.name for p in pairs], seed=data_seed)
        name = _unique(folder.resolve().name, taken)
        datasets.append(SegDataset(name=name, kind="real", image_size=_short_side(pairs[0].image), root=folder.resolve(),
                                   split_seed=data_seed, split=split))
        if real_in_pool:
            allowed = set(split["train"]) | set(split["val"])
            pool_sources[name] = [p.image for p in pairs if p.name in allowed]
    for folder in unlabelled:
        folder = Path(folder)
        pool_sources[_unique(folder.resolve().name, taken)] = list_images(folder)

    pool_images = out / "pool" / "images"
    sizes = build_pool(pool_images, pool_sources)
    pool_priors = out / "pool" / "priors" / "vessel"
    # One parameter set per cache: the frame scaled to the synthetic images, the bulk of the pool.
    summary = ensure_vessel_priors(pool_images, pool_priors, device=prior_device, border=vesselness_border(synth_size))
    if summary.n_failed:
        log.warning("%d pool image(s) could not be read and are left out of pretraining", summary.n_failed)
    examples = sorted(pool_images.glob("synthetic__*"))[:n_examples]
    return BenchData(datasets=datasets, pool_images=pool_images, pool_priors=pool_priors, pool_sources=sizes,
                     example_images=examples)


def pool_fingerprint(pool_images: Path) -> list[str]:
    """Sorted pool file names: two runs pretrain on the same pool iff these agree."""
    return sorted(p.name for p in pool_images.iterdir())
