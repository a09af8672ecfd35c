"""Vessel-segmentation fine-tuning, split by concern.

* :mod:`~priormim.training.seg.config`: :class:`SegFinetuneConfig`, the fixed splits;
* :mod:`~priormim.training.seg.data`: reading pairs, normalisation, resizing, paired augmentation;
* :mod:`~priormim.training.seg.model_io`: build / save / load a segmenter;
* :mod:`~priormim.training.seg.inference`: sliding windows, :class:`PostProcess`, scoring, threshold choice;
* :mod:`~priormim.training.seg.loop`: one seed's training loop;
* :mod:`~priormim.training.seg.run`: every seed of a config and the results tables;
* :mod:`~priormim.training.seg.baseline`: saved-model evaluation and the vesselness baseline.

:mod:`priormim.training.finetune_seg` re-exports the public names (the historical import path).
"""
