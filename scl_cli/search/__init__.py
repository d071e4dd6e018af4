"""Search an image collection by text or image: the faiss index (`faiss_index`), the index folder
and checkpoint fingerprint (`store`), media decoding (`media`), model features shared with
`scl eval retrieval` (`features`) and contact sheets (`contact_sheet`). Engines: `scl_cli.engines.index`,
`scl_cli.engines.retrieve`."""
