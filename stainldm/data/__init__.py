"""Paired tiles: the tile store (:mod:`.store`), one slide pair to tiles (:mod:`.pairs`), slide
pairs to a store (:mod:`.prepare`, :mod:`.pair_reports`), splits by core (:mod:`.split`), the torch
dataset and augmentation (:mod:`.dataset`, :mod:`.augment`), and make-sample's simulated pairs
(:mod:`.synthetic` with :mod:`.tma_layout`, :mod:`.sample_plan`, :mod:`.warp`, :mod:`._optics`;
on disk: :mod:`.sample_files`)."""
