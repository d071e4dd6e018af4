"""Loading and saving `SCL` models (`inference.model`) the way Hugging Face users expect
(`PyTorchModelHubMixin`'s names): `from_pretrained` (a run, checkpoint or saved folder, a published
`.ckpt`, or a Hub id), `save_pretrained` (a self-contained folder: safetensors weights, config.json
with the architecture and heads, tokenizer, answer list, model card) and `push_to_hub`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scl_cli.data.tokenizer import TextTokenizer, load_tokenizer
from scl_cli.errors import CheckpointError
from scl_cli.model.checkpoint import read_checkpoint
from scl_cli.model.loading import build_model
from scl_cli.model.task_heads import VQA_VOCABULARY_FILE, describe_heads

if TYPE_CHECKING:
    from scl_cli.inference.model import SCL
    from scl_cli.model.scl_model import SCLModel


class PretrainedMixin:
    """`from_pretrained`, `save_pretrained`, `push_to_hub`, `model_card` of `SCL`."""

    module: SCLModel
    tokenizer: TextTokenizer | None
    config: dict[str, Any]
    answers: list[str] | None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        tokenizer: str | Path | TextTokenizer | None = None,
        answers: str | Path | list[str] | None = None,
        data_root: str | Path = "data",
    ) -> SCL:
        """Load a run folder (its newest checkpoint), a checkpoint or `save_pretrained` folder, a
        published SCL `.ckpt` (converted in memory) or a Hugging Face Hub model id (`user/repo`;
        `revision`, `cache_dir`, `token`, `local_files_only` as in `huggingface_hub`).

        `tokenizer` replaces the checkpoint's (a tokenizer.json path or a Hub tokenizer name; a
        converted published checkpoint names `FacebookAI/roberta-base`); `answers` gives the VQA
        answer list (a JSON file or a list) when the checkpoint has a VQA head without one.
        """
        from scl_cli.inference.hub import resolve_source

        path = resolve_source(name_or_path, revision, cache_dir, token, local_files_only)
        state, config = read_checkpoint(path)
        built = build_model(state, config)
        del state
        if isinstance(tokenizer, TextTokenizer):
            tok = tokenizer
        else:
            spec = (
                str(tokenizer)
                if tokenizer is not None
                else str(config.get("tokenizer") or "FacebookAI/roberta-base")
            )
            tok = load_tokenizer(spec, Path(data_root), "")
        vocabulary = _answer_list(answers, config, path)
        source = (
            str(name_or_path) if not Path(str(name_or_path)).exists() else str(config.get("checkpoint", path))
        )
        return cls(built.model, tok, config, device, dtype, vocabulary, source)

    def save_pretrained(
        self, save_directory: str | Path, *, model_card: str | bool = True, repo_id: str | None = None
    ) -> Path:
        """Write a self-contained folder that `scl.load` (and the Hub) reads: `model.safetensors`,
        `config.json` (architecture, heads, recipe), `tokenizer.json`, `answers.json` (VQA) and a
        `README.md` model card (`model_card`: True = generated, a string = that text, False = none).
        Files are replaced atomically; other files in the folder are left alone."""
        from scl_cli.io.atomic import atomic_file, atomic_write_json, atomic_write_text
        from scl_cli.io.checkpoints import CONFIG_FILE, FORMAT, MODEL_FILE, VERSION
        from scl_cli.io.tensors import save_safetensors

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.saved_config()
        with atomic_file(out / MODEL_FILE) as tmp:
            save_safetensors({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, tmp)
        if self.tokenizer is not None:
            with atomic_file(out / "tokenizer.json") as tmp:
                self.tokenizer.save(tmp)
        if self.answers is not None:
            atomic_write_json(out / VQA_VOCABULARY_FILE, self.answers, indent=None)
        atomic_write_json(out / CONFIG_FILE, {"format": FORMAT, "version": VERSION, **config})
        if model_card:
            text = model_card if isinstance(model_card, str) else self.model_card(repo_id)
            atomic_write_text(out / "README.md", text)
        return out

    def model_card(self, repo_id: str | None = None, reports: list[dict[str, Any]] | None = None) -> str:
        """README.md text: architecture, heads, the recipe, the training data's manifests (when
        still on disk) and the evaluation reports kept with the checkpoint (`eval*.json`) plus
        `reports`."""
        from scl_cli.inference.card import find_manifests, find_reports, model_card

        found = find_reports(self.config.get("checkpoint")) + list(reports or [])
        return model_card(self.saved_config(), repo_id, self.module.num_parameters(), found,
                          find_manifests(self.config), self._recipe_toml())  # fmt: skip

    def saved_config(self) -> dict[str, Any]:
        """config.json of `save_pretrained`: the checkpoint's, with the heads described, the
        tokenizer and answer files named, and the machine-local `checkpoint` path dropped."""
        config = {k: v for k, v in self.config.items() if k not in ("checkpoint", "format", "version")}
        config["model"] = self.module.config.model_dump(mode="json")
        config["vocab_size"], config["pad_token_id"] = self.module.vocab_size, self.module.pad_token_id
        config["heads"] = describe_heads(
            self.module, VQA_VOCABULARY_FILE if self.answers is not None else None
        )
        config["tokenizer"] = "tokenizer.json" if self.tokenizer is not None else config.get("tokenizer")
        config.setdefault("step", 0)
        config.pop("extra_heads", None)
        return config

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str = "Upload SCL model",
        revision: str | None = None,
        create_pr: bool = False,
        model_card: str | bool = True,
    ) -> str:
        """`save_pretrained` into a temporary folder and upload it to the Hub model repo `repo_id`
        (created when missing) as one commit; returns the commit URL."""
        import tempfile

        from scl_cli.inference.hub import upload_folder

        with tempfile.TemporaryDirectory(prefix="scl-push-") as tmp:
            self.save_pretrained(tmp, model_card=model_card, repo_id=repo_id)
            return upload_folder(Path(tmp), repo_id, private, token, commit_message, revision, create_pr)

    def _recipe_toml(self) -> str | None:
        recipe = self.config.get("recipe")
        if not isinstance(recipe, dict):
            return None
        try:
            from scl_cli.config import recipe_from_dict, recipe_to_toml

            return recipe_to_toml(recipe_from_dict(recipe))
        except Exception:  # a recipe of another scl version: the card shows it as JSON instead
            return "# recipe (JSON, as stored in config.json)\n# " + json.dumps(recipe)


def _answer_list(
    answers: str | Path | list[str] | None, config: dict[str, Any], path: Path
) -> list[str] | None:
    """The VQA answer list: `answers` (a list or a JSON file), else the file config.json names
    (`heads.vqa.vocabulary`, beside the weights), else an `answers.json` there (checkpoints written
    before config.json described its heads); None when there is none."""
    if isinstance(answers, list):
        return [str(a) for a in answers]
    if answers is not None:
        files = [Path(answers)]
        if not files[0].is_file():
            raise CheckpointError(f"answer list {answers} does not exist")
    else:
        folder = Path(str(config.get("checkpoint", path)))
        if not folder.is_dir():
            return None
        vqa = (config.get("heads") or {}).get("vqa") if isinstance(config.get("heads"), dict) else None
        named = vqa.get("vocabulary") if isinstance(vqa, dict) else None
        files = ([folder / named] if named else []) + [folder / VQA_VOCABULARY_FILE]
    for file in files:
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(f"{file}: not a readable answer list ({err})") from None
            if not isinstance(data, list):
                raise CheckpointError(f"{file}: expected a JSON list of answers")
            return [str(a) for a in data]
    return None
