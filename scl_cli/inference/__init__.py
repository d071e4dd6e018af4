"""Using a trained model: `SCL` (`model`), the API behind `scl.load` — embeddings, match scores,
VQA and NLVR2 answers from paths, PIL images, arrays or tensors (`inputs`); saving and the Hugging
Face Hub (`hub`, model cards: `card`). `loading.load_model` builds a model for fine-tuning."""

from scl_cli.inference.model import SCL, Answer, TextFeatures, Verdict

__all__ = ["SCL", "Answer", "TextFeatures", "Verdict"]
