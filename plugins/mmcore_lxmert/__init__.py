"""Built-in plugin: the LXMERT-S backbone (``lxmert_s``)."""
