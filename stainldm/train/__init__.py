"""Training: the loop (:mod:`.loop`), one small class per model kind (:mod:`.kinds`), the config
(:mod:`.config`), the resumable state (:mod:`.checkpoint`), metrics and wandb (:mod:`.tracking`)."""
