"""Record every preference pair that a TRL DPOTrainer scores, train and eval, as a pair log.

    from trl import DPOTrainer
    from dpodiag.integrations.trl import record_pairs

    trainer = DPOTrainer(model=..., args=..., train_dataset=..., eval_dataset=...)
    record_pairs(trainer)          # shards go to OUTPUT_DIR/dpodiag-pairs/
    trainer.train()

    $ dpodiag check OUTPUT_DIR    # reads OUTPUT_DIR/dpodiag-pairs/, the run named OUTPUT_DIR

Supported versions: TRL 0.29 up to, not including, 2.0 (``pip install 'dpodiag[trl]'``). Other
versions raise UsageError.
NOTE: only TRL 1.16.0 (with transformers 5.25.0) runs in the tests. The other versions are
accepted because the sources of 0.29.0, 1.0.0, 1.8.0 and 1.12.0 compute the same locals.

How it captures the values without changing the training. In these versions
``DPOTrainer._compute_loss`` computes the per-pair summed log-probs ``chosen_logps``,
``rejected_logps``, ``ref_chosen_logps`` and ``ref_rejected_logps`` as local variables and
exposes no method that returns them. `record_pairs` wraps the trainer's ``compute_loss`` and,
for the duration of each call, the accelerator's ``gather`` and ``gather_for_metrics``. The
first of those that ``_compute_loss`` calls after the loss reads the four tensors, the
completion mask and the per-pair loss from the calling frame. No forward pass is added and no
value is changed. The cost is one device-to-host copy of a few numbers per pair per batch.

What each row contains:
- step: ``trainer.state.global_step`` when the batch was scored, the number of optimizer
  updates before it. TRL logs the window that contains this batch at step + 1 for train, and
  at the same step for eval.
- the four log-probs, summed over completion tokens as TRL computes them. With ``ld_alpha``
  set they are TRL's length-desensitised sums.
- chosen_length, rejected_length: completion tokens per response (TRL's completion mask).
- loss: TRL's per-pair loss, times its weight, when one loss type is configured. With several
  loss types the column is left out.
- example_id: a hash of the pair's token ids, because TRL's batches carry no dataset index.
  Identical pairs share an id.
- split: "train" or "eval", from the model's training flag as TRL decides it.

Each process of a distributed run records its own pairs into shards named part-rankN-*.parquet
in the same folder, which `dpodiag check` reads as one run.
NOTE: distributed recording has not been run. Where accelerate pads an uneven last eval batch
with repeated examples, those repeats are recorded too, under the same example_id.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from dpodiag.compute.loss_names import canonical_loss_type
from dpodiag.errors import UsageError
from dpodiag.io import RECORDER_FOLDER
from dpodiag.record import Recorder

MIN_VERSION = "0.29"
MAX_VERSION = "2.0"
# Locals of DPOTrainer._compute_loss that contain the per-pair values in TRL 0.29 to 1.x.
LOGPS_LOCALS = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
OTHER_LOCALS = ("completion_mask", "per_sequence_loss")
# TRL loss types whose formula uses label_smoothing; TRL's "sigmoid" ignores it.
SMOOTHED_LOSS_TYPES = {"robust", "exo_pair", "aot", "aot_unpaired"}
# Recorder arguments that record_pairs takes from the trainer, and those a caller may pass.
RUN_METADATA_ARGUMENTS = ("beta", "loss_type", "label_smoothing", "simpo_gamma", "logps_normalisation",
                          "framework", "policy_model", "reference_model", "trainer_config")
RECORDER_OPTIONS = ("flush_rows", "flush_seconds", "append", "shard_prefix", "extra_metadata")


def record_pairs(trainer, folder: str | Path | None = None, **recorder_options) -> Recorder:
    """Make `trainer` record every pair it scores into parquet shards in `folder`.

    `folder` defaults to ``trainer.args.output_dir``/dpodiag-pairs. `recorder_options` go to
    `Recorder` (flush_rows, flush_seconds, append; use ``append=True`` when resuming from a
    checkpoint). The recorder flushes after each evaluation, checkpoint save and at the end of
    training, and closes at interpreter exit. Returns the recorder.

    Raises:
        UsageError: TRL is missing or of an unsupported version, `trainer` is not a
            DPOTrainer, records already, or uses the Liger kernel, whose loss path this
            capture cannot read.
    """
    version = _check_trl_version()
    from trl import DPOTrainer

    if not isinstance(trainer, DPOTrainer):
        raise UsageError(f"record_pairs: expected a trl.DPOTrainer, got {type(trainer).__name__}")
    metadata = _run_metadata(trainer, version)
    extra = recorder_options.pop("extra_metadata", None) or {}
    _check_options(recorder_options, extra, metadata)
    if isinstance(getattr(trainer, "compute_loss", None), _CaptureMethod):
        raise UsageError("record_pairs: this trainer records its pairs already; call record_pairs once per trainer")
    if getattr(trainer, "use_liger_kernel", False) or getattr(trainer.args, "use_liger_kernel", False):
        raise UsageError("record_pairs: DPOConfig(use_liger_kernel=True) computes the loss in a fused "
                         "kernel that exposes no per-pair log-probs; set use_liger_kernel=False to record")

    folder = Path(folder) if folder is not None else Path(trainer.args.output_dir) / RECORDER_FOLDER
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:
        recorder_options.setdefault("shard_prefix", f"part-rank{accelerator.process_index}")
    metadata["extra_metadata"].update(extra)
    recorder = Recorder(folder, **metadata, **recorder_options)

    capture = _PairCapture(trainer, recorder)
    trainer.compute_loss = _CaptureMethod(capture)
    trainer.add_callback(_flush_callback(recorder))
    return recorder


def _check_options(options: dict[str, Any], extra: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Raise when an option of record_pairs names run metadata, which the trainer gives, or is
    not a Recorder option."""
    for name in [*options, *extra]:
        if name in RUN_METADATA_ARGUMENTS:
            value = metadata.get(name)
            raise UsageError(f"record_pairs: {name} is read from the trainer"
                             + (f" (here {value!r})" if value is not None else "")
                             + f"; set it in DPOConfig, or pass {name} to Recorder when you log "
                             "pairs from your own loop")
    unknown = [name for name in options if name not in RECORDER_OPTIONS]
    if unknown:
        raise UsageError(f"record_pairs: unknown option {unknown[0]!r}; expected one of "
                         f"{', '.join(RECORDER_OPTIONS)}")


def _check_trl_version() -> str:
    """Return the installed TRL version, or raise when it is missing or unsupported."""
    try:
        import trl
    except ImportError:
        raise UsageError("record_pairs needs TRL; install it with: pip install 'dpodiag[trl]'") from None
    from packaging.version import Version

    version = Version(trl.__version__)
    if not Version(MIN_VERSION) <= version < Version(MAX_VERSION):
        raise UsageError(f"record_pairs supports TRL {MIN_VERSION} up to, not including, {MAX_VERSION}, "
                         f"found {trl.__version__}; install a supported TRL or log pairs with "
                         "dpodiag.record.Recorder from your own loop")
    return trl.__version__


def _run_metadata(trainer, version: str) -> dict[str, Any]:
    """Return the Recorder's metadata arguments from the trainer's configuration."""
    args = trainer.args
    loss_types = list(trainer.loss_types)
    metadata: dict[str, Any] = {"beta": float(trainer.beta), "framework": f"trl {version}",
                                "logps_normalisation": "sum",
                                "policy_model": _model_name(trainer.model)}
    if len(loss_types) == 1 and canonical_loss_type(loss_types[0]) is not None:
        metadata["loss_type"] = loss_types[0]
        if loss_types[0] in SMOOTHED_LOSS_TYPES:
            metadata["label_smoothing"] = float(trainer.label_smoothing)
    if trainer.ref_model is not None:
        metadata["reference_model"] = _model_name(trainer.ref_model)

    settings = {"loss_type": loss_types, "loss_weights": [float(w) for w in trainer.loss_weights],
                "label_smoothing": float(trainer.label_smoothing),
                "f_divergence_type": str(getattr(trainer, "f_divergence_type", "reverse_kl")),
                "ld_alpha": getattr(trainer, "ld_alpha", None),
                "use_weighting": bool(getattr(trainer, "use_weighting", False)),
                "precompute_ref_log_probs": bool(getattr(args, "precompute_ref_log_probs", False)),
                "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
                "per_device_train_batch_size": int(args.per_device_train_batch_size),
                "num_processes": int(trainer.accelerator.num_processes)}
    metadata["extra_metadata"] = {"trainer_config": settings}
    return metadata


def _model_name(model) -> str | None:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None)
    return str(name) if name else None


class _CaptureMethod:
    """The callable installed as ``trainer.compute_loss``; its type marks a recording trainer."""

    def __init__(self, capture: _PairCapture):
        self.capture = capture

    def __call__(self, model, inputs, *args, **kwargs):
        return self.capture.compute_loss(model, inputs, *args, **kwargs)


class _PairCapture:
    """The trainer's compute_loss, wrapped to read the per-pair values of each batch."""

    def __init__(self, trainer, recorder: Recorder):
        self.trainer = trainer
        self.recorder = recorder
        self.original_compute_loss = trainer.compute_loss
        self.captured: dict[str, Any] | None = None

    def compute_loss(self, model, inputs, *args, **kwargs):
        """Run TRL's compute_loss unchanged and record the pairs it scored."""
        accelerator = self.trainer.accelerator
        patched = {name: accelerator.__dict__.get(name) for name in ("gather", "gather_for_metrics")}
        for name in patched:
            setattr(accelerator, name, self._peek(getattr(accelerator, name)))
        self.captured = None
        try:
            result = self.original_compute_loss(model, inputs, *args, **kwargs)
        finally:
            for name, previous in patched.items():
                if previous is None:
                    delattr(accelerator, name)
                else:
                    setattr(accelerator, name, previous)

        if self.captured is None:
            raise UsageError("record_pairs: DPOTrainer._compute_loss did not expose chosen_logps, "
                             "rejected_logps, ref_chosen_logps and ref_rejected_logps; this TRL version "
                             f"is not supported, use TRL {MIN_VERSION} to 1.x or remove record_pairs")
        self._record(self.captured, inputs)
        self.captured = None
        return result

    def _peek(self, gather):
        """Wrap an accelerator gather so that its first call from _compute_loss reads the locals."""

        def peek(*args, **kwargs):
            if self.captured is None:
                frame = sys._getframe(1)
                if frame.f_code.co_name == "_compute_loss":
                    names = frame.f_locals
                    if all(name in names for name in LOGPS_LOCALS):
                        self.captured = {name: names.get(name) for name in LOGPS_LOCALS + OTHER_LOCALS}
                del frame
            return gather(*args, **kwargs)

        return peek

    def _record(self, captured: dict[str, Any], inputs) -> None:
        trainer = self.trainer
        chosen_mask, rejected_mask = captured["completion_mask"].chunk(2, dim=0)
        loss = None
        if len(trainer.loss_types) == 1 and captured["per_sequence_loss"] is not None:
            loss = captured["per_sequence_loss"] * float(trainer.loss_weights[0])
        self.recorder.log(
            step=trainer.state.global_step,
            split="train" if trainer.model.training else "eval",
            epoch=float(trainer.state.epoch or 0.0),
            policy_chosen_logps=captured["chosen_logps"],
            policy_rejected_logps=captured["rejected_logps"],
            reference_chosen_logps=captured["ref_chosen_logps"],
            reference_rejected_logps=captured["ref_rejected_logps"],
            chosen_length=chosen_mask.sum(dim=1),
            rejected_length=rejected_mask.sum(dim=1),
            loss=loss,
            example_id=_pair_ids(inputs["input_ids"], inputs["attention_mask"]),
        )


def _pair_ids(input_ids, attention_mask) -> list[str]:
    """Return a 16-hex-digit BLAKE2b hash of each pair's unpadded chosen and rejected token ids.

    TRL's batches contain the chosen sequences first and the rejected ones second.
    """
    ids = input_ids.detach().cpu().numpy()
    mask = attention_mask.detach().cpu().numpy().astype(bool)
    pairs = ids.shape[0] // 2
    hashes = []
    for index in range(pairs):
        digest = hashlib.blake2b(digest_size=8)
        digest.update(ids[index][mask[index]].astype("<i8").tobytes())
        digest.update(b"|")
        digest.update(ids[pairs + index][mask[pairs + index]].astype("<i8").tobytes())
        hashes.append(digest.hexdigest())
    return hashes


def _flush_callback(recorder: Recorder):
    """Return a TrainerCallback that writes the buffered rows after evaluations, saves and training."""
    from transformers import TrainerCallback

    class FlushPairLog(TrainerCallback):
        def on_evaluate(self, args, state, control, **kwargs):
            recorder.flush()

        def on_save(self, args, state, control, **kwargs):
            recorder.flush()

        def on_train_end(self, args, state, control, **kwargs):
            recorder.flush()

    return FlushPairLog()
