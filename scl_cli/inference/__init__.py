"""Using a trained model: load any checkpoint with its tokenizer (`loading`)."""
