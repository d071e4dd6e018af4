"""Files: atomic writes (`atomic`), safe tensor files (`tensors`), checkpoint folders
(`checkpoints`) and content fingerprints (`fingerprint`). Nothing here knows the model."""
