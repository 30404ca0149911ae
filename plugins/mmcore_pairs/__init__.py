"""The ``pairs`` dataset: your own images and JSONL annotations (docs/your-data.md)."""
