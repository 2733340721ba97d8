"""The model files of a checkpoint (and of the final model), written in one pass.

The same files ``save_pretrained`` and ``tokenizer.save_pretrained`` write, byte for byte
(``tests/checkpoint/test_one_pass_save.py``), but each file's sha256 is computed while it is written:
- the weights go through transformers' own choice of what to save (tied copies left out, renamed
  weights reverted, ``max_shard_size`` shards with their index), then are written tensor by tensor by
  ``checkpoint/safetensors_writer.py`` into a ``HashingFile``;
- config.json, generation_config.json, the tokenizer files and chef_genius_prompt.json do not change
  during a run: they are produced once, by transformers itself, and kept as bytes.
Nothing is fsynced here: the commit fsyncs every file of the save together (``checkpoint/commit.py``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from huggingface_hub import split_torch_state_dict_into_shards
from transformers.modeling_utils import remove_tied_weights_from_state_dict, revert_weight_conversion, unwrap_model

from chef_genius.checkpoint import layout as ckpt
from chef_genius.checkpoint import records as ckrecords
from chef_genius.checkpoint.files import write_bytes_hashed, write_hashed
from chef_genius.checkpoint.safetensors_writer import write_safetensors

SHARD_PATTERN = ckpt.WEIGHTS.replace(".safetensors", "{suffix}.safetensors")


class PretrainedFiles:
    def __init__(self, model, tokenizer, source_template: str | None = None, max_shard_size: int | str = "1000GB"):
        # the object save_pretrained runs on (an FSDP wrapper forwards the call to the model inside)
        self.model = unwrap_model(model.save_pretrained.__self__)
        self.tokenizer, self.source_template, self.max_shard_size = tokenizer, source_template, max_shard_size
        self._fixed: dict[str, bytes] | None = None

    def write(self, folder: Path, weights: dict) -> dict[str, str]:
        """Write every model file into ``folder`` (the full ``weights``); returns name -> sha256."""
        folder = Path(folder)
        digests = {name: write_bytes_hashed(folder / name, data) for name, data in self.fixed_files().items()}
        digests.update(self._write_weights(folder, weights))
        return digests

    def fixed_files(self) -> dict[str, bytes]:
        """Config, generation config, tokenizer and prompt files, as their savers write them (made once)."""
        if self._fixed is None:
            with tempfile.TemporaryDirectory(prefix="chef-genius-model-files-") as scratch:
                self.model.save_pretrained(scratch, state_dict={})  # the config files, as save_pretrained writes them
                self.tokenizer.save_pretrained(scratch)
                if self.source_template is not None:
                    ckrecords.write_prompt(scratch, self.source_template)
                self._fixed = {
                    p.name: p.read_bytes()
                    for p in sorted(Path(scratch).iterdir())
                    if p.is_file() and not ckpt.is_weights_file(p.name)
                }
        return self._fixed

    def _write_weights(self, folder: Path, weights: dict) -> dict[str, str]:
        # the steps of save_pretrained between its state dict and its safetensors files
        state = dict(weights)
        for key in self.model._keys_to_ignore_on_save or ():
            state.pop(key, None)
        state = remove_tied_weights_from_state_dict(state, self.model)
        state = revert_weight_conversion(self.model, state)
        split = split_torch_state_dict_into_shards(
            state, filename_pattern=SHARD_PATTERN, max_shard_size=self.max_shard_size
        )
        digests = {}
        for shard_file, names in split.filename_to_tensors.items():
            shard = {name: state[name] for name in names}
            digests[shard_file] = write_hashed(
                folder / shard_file,  # calls the lambda before the loop moves on
                lambda stream: write_safetensors(stream, shard, {"format": "pt"}),  # noqa: B023
            )
        if split.is_sharded:
            index = {
                "metadata": {"total_parameters": self.model.num_parameters(), **split.metadata},
                "weight_map": split.tensor_to_filename,
            }
            text = json.dumps(index, indent=2, sort_keys=True) + "\n"
            digests[ckpt.WEIGHTS_INDEX] = write_bytes_hashed(folder / ckpt.WEIGHTS_INDEX, text.encode("utf-8"))
        return digests
