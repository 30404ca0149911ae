"""Built-in plugin: the LXMERT backbones (``lxmert``, ``lxmert_s``) and their weights in and out."""
