"""Search an image collection by text or image: the faiss index (`faiss_index`), the index folder
and checkpoint fingerprint (`store`), building an index (`indexing`, `parts`), queries (`retriever`),
two-stage ranking shared with `scl eval retrieval` (`ranking`) and contact sheets (`contact_sheet`).
Model features come from `scl_cli.inference`; media decoding from `scl_cli.data.media`. Engines:
`scl_cli.engines.index`, `scl_cli.engines.retrieve`, `scl_cli.engines.serve`."""
