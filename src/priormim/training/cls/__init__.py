"""Chest X-ray classification with a (pre-trained) ViT encoder: linear probe or full fine-tuning.

The protocol follows facebookresearch/mae (``main_linprobe.py``, ``main_finetune.py``):

* **linear**: the encoder is frozen in eval mode; a ``BatchNorm1d(affine=False) + Linear`` head
  is trained on its class-token features. There is no augmentation, so the features are
  computed once and the head is trained on them (seconds, even for ChestX-ray14). MAE's LARS
  optimiser exists to keep a 16k batch stable; at the batch sizes used here SGD with momentum
  0.9 on the BatchNorm-whitened features does the same job, and is the default.
* **full**: every weight is trained with AdamW, layer-wise lr decay
  (``timm.optim.create_optimizer_v2(layer_decay=...)``), drop-path, and a per-step cosine
  schedule with linear warm-up (``timm.scheduler.CosineLRScheduler``); light augmentation:
  random resized crop (80-100 % of the area) and a small rotation (±10°). No horizontal flip by
  default: a chest X-ray is not left-right symmetric (heart on the patient's left, the
  laterality marker, situs inversus and dextrocardia are findings), so a flipped film is not a
  plausible training image.

Shared by both: images are read once (``priormim.io.read_gray``), squashed to ``img_size`` x
``img_size`` (as CheXNet; CXRs are near-square) and kept in memory as ``uint8`` (N·img_size²
bytes: ~5.6 GB for ChestX-ray14 at 224). They are normalised with the grey-level mean/std of
the encoder's pretraining data (file metadata) or, without an encoder file, of the training
set; never with ImageNet RGB statistics. Unreadable images are skipped, logged and counted.

The best epoch is picked by the AUC on a validation split: ``--val`` or a fixed split carved
from the training set (``split_seed``, stratified by class; by patient for ChestX-ray14 file
names), never the test set. When ``--test`` is the ``--train`` folder (e.g. RSNA, which has no
labelled test set), a fixed test split is carved first the same way.

AUC: binary -> score = probability of ``class_names[1]`` (cross-entropy over two logits);
multi-label -> mean of the per-label AUCs (BCE loss); more than two classes -> macro
one-vs-rest AUC. Results go to ``<out>/seed<k>/metrics.json`` and ``<out>/results.{md,csv}``
(mean ± std over seeds); finished seeds are skipped when the run is started again.

Split by concern:

* :mod:`~priormim.training.cls.config`: :class:`ClsFinetuneConfig` (per-mode defaults), result types;
* :mod:`~priormim.training.cls.data`: reading, splitting and decoding the data sets;
* :mod:`~priormim.training.cls.train`: loss, AUC, augmentation and the training loop (:func:`fit`,
  on :mod:`priormim.training.loop`: per-seed ``log.jsonl`` + TensorBoard, progress bar,
  non-finite guard, the run's AMP policy, resume from ``seed<k>/last.ckpt``);
* :mod:`~priormim.training.cls.run`: one seed, every seed, finished-seed reuse;
* :mod:`~priormim.training.cls.results`: ``results.md`` / ``results.csv``.

:mod:`priormim.training.finetune_cls` re-exports the public names (the historical import path).
"""
