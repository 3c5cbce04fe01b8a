"""Slides: reading (:mod:`.slide` API, :mod:`.reader` backends and ``open_slide``, :mod:`.metadata`),
writing pyramidal TIFFs (:mod:`.writer`), tissue masks (:mod:`.tissue`), TMA dearraying
(:mod:`.tma`), tile grids (:mod:`.tiling`) and cross-modal registration (:mod:`.register`).
Below every other subpackage: it imports none of them."""
