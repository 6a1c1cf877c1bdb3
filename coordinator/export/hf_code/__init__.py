"""Model code that an export carries in its own directory, for ``from_pretrained(DIR, trust_remote_code=True)``.

Each file here is copied verbatim into the exports that need it and named in their ``config.json`` ``auto_map``, so
an inference user loads the export with plain ``transformers`` and nothing of warmswarm installed. That is why these
modules import only ``torch`` and ``transformers`` (never ``peer`` or ``coordinator``), and why the export code
itself uses the same functions (one implementation of the format, on both sides).
"""
