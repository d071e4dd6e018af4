"""Data: shard files and manifests (`shards`), the synthetic shapes corpus (`shapes`), the text
tokenizer (`tokenizer`), image transforms (`transforms`) and the pre-training loader (`loader`).

Import from the modules themselves; this package stays import-light so the CLI starts fast.
"""
