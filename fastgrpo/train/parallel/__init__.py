"""Running on several processes: data parallelism over ``torchrun`` (:mod:`~fastgrpo.train.parallel.distributed`)
and FSDP2 sharding of the transformer (:mod:`~fastgrpo.train.parallel.fsdp`)."""
