"""Evaluation of virtual against real H&E on held-out cores: cores (:mod:`.cores`), the methods'
predictions (:mod:`.predictions`), the evaluation itself (:mod:`.evaluate`, :mod:`.fid`), image
metrics (:mod:`.metrics`) and their one table (:mod:`.table`), statistics (:mod:`.stats`), figures
(:mod:`.figures`) and the HTML report (:mod:`.report`, Jinja2 ``templates/``)."""
