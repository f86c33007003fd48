"""napari dock widgets of napari-cryoden (Qt; never imported by the core or by ``napari_cryoden``).

The manifest points straight at each widget class (:class:`~napari_cryoden._widgets.denoise.DenoiseWidget`,
:class:`~napari_cryoden._widgets.metrics.MetricsWidget`, :class:`~napari_cryoden._widgets.train.TrainWidget`),
so this package imports nothing itself: plugin discovery stays free of Qt and torch.
"""

__all__: list[str] = []
