"""The ``lxmert`` dataset: LXMERT's annotation files as shipped, over feature stores made by ``mmcore data``."""
