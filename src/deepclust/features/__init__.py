"""Images into vectors: backbones (:mod:`.backbones`, :mod:`.networks`), THE embedding path (:mod:`.extract`), the per-run cache (:mod:`.cache`) and the embedding store (:mod:`.store`)."""
