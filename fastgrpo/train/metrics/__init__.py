"""What a run reports: FLOPs and MFU (:mod:`~fastgrpo.train.metrics.flops`), the progress line
(:mod:`~fastgrpo.train.metrics.progress`) and the plots (:mod:`~fastgrpo.train.metrics.plots`)."""
