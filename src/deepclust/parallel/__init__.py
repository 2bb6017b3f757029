"""Work on several processes: DDP for training (:mod:`.ddp`), Dask executors for embedding and clustering at scale (:mod:`.executors`)."""
