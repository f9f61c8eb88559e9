"""What a run keeps on disk: the run directory (:mod:`~fastgrpo.train.storage.run_dir`) and atomic, multi-rank
checkpoints (:mod:`~fastgrpo.train.storage.checkpoints`)."""
