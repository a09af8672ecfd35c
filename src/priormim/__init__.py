"""priormim: prior-guided masked image modeling (VasoMIM, VP-MIM) on X-ray images."""

__version__ = "0.1.0"
