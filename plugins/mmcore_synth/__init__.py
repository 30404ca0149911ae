"""Built-in plugin: the ``synthworld`` dataset, a seeded COCO + Visual Genome look-alike generated on demand."""
