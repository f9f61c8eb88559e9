"""What a run reports: the metrics row (:mod:`~fastgrpo.train.metrics.processor`) and where it goes
(:mod:`~fastgrpo.train.metrics.sinks`: jsonl, TensorBoard, W&B), FLOPs and MFU (:mod:`~fastgrpo.train.metrics.flops`),
the progress line (:mod:`~fastgrpo.train.metrics.progress`) and the plots (:mod:`~fastgrpo.train.metrics.plots`)."""
