"""Staining: a trained model (:mod:`.model`, :mod:`.config`), canvas maths (:mod:`.canvas`), window
by window denoising (:mod:`.sampling`), one slide (:mod:`.stain`) and a folder of slides with
shards, manifest and resume (:mod:`.batch`)."""
