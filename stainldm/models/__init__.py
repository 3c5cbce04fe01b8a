"""The networks (:mod:`.autoencoder`, :mod:`.encoder`, :mod:`.denoiser`, :mod:`.ldm`,
:mod:`.baseline`) and the model registry (:mod:`.runs`: build any kind from its config, load or
export any run folder), which training and staining both use."""
