"""The data toolkit: the data plumbing a dataset, extractor or head plugin may use (the built-in ones use only this).

Public modules (each offers the names of its own ``__all__``):

- :mod:`~mmcore.data.store`: the HDF5 feature store (``FeatureStore``, ``write_feature_store``, ``CACHE_MODES``),
- :mod:`~mmcore.data.views`: generic views over a store (``PairView``, ``AnswerView``, ``TwoImageView``, ...),
- :mod:`~mmcore.data.annotations`: readers and writers of VQA, GQA, NLVR2, caption and vocabulary files,
- :mod:`~mmcore.data.tokenizer`: building a WordPiece vocabulary, loading a local tokenizer,
- :mod:`~mmcore.data.fileio`: atomic file writes (``atomic_path``, ``write_json``, ``write_lines``),
- :mod:`~mmcore.data.hardneg`: hard-negative files, :mod:`~mmcore.data.hubness`: their hub statistics,
- :mod:`~mmcore.data.extract`: the extractor contract (``Extractor``, ``Regions``, ``build_extractor``),
- :mod:`~mmcore.data.userdata`, :mod:`~mmcore.data.prepare`, :mod:`~mmcore.data.datacheck`: JSONL source
  folders, the directories ``mmcore data prepare`` makes of them, and their question-only baseline.

The other modules here (collation, loading, caches, image decoding, standardisation) are the engine's own.
"""

# Module names, not attributes: ``from mmcore.data import views`` imports the one named (nothing is imported here,
# so that a plugin using one module does not pay for the others).
__all__ = ["annotations", "datacheck", "extract", "fileio", "hardneg", "hubness", "prepare", "store", "tokenizer",
           "userdata", "views"]
