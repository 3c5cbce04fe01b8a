"""Evaluation: virtual against real H&E on held-out cores (:mod:`.metrics`) and the HTML report (:mod:`.report`)."""
