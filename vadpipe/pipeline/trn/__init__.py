"""Training SA-CRF's relation-aware extractor (``resnet50-trn``) on raw videos.

* :mod:`vadpipe.pipeline.trn.data`: the video list, TRN's segment sampling, frame-exact decoding;
* :mod:`vadpipe.pipeline.trn.train`: the network with its classifier, the paper's optimiser and
  :func:`~vadpipe.pipeline.trn.train.train_backbone`;
* :mod:`vadpipe.pipeline.trn.export`: the checkpoint converted to the extractor's weights file;
* :mod:`vadpipe.pipeline.trn.bench`: ``vadpipe bench train-backbone``.
"""
