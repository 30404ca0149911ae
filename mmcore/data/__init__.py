"""Data plumbing shared by every dataset plugin: the HDF5 feature store, annotation readers, views, collation."""
