"""Training: a prepared dataset -> a fine-tuned Whisper, checkpointed, resumable, on the Hub.

The pipeline (:func:`train`) reads top to bottom like transformers'
``run_speech_recognition_seq2seq.py``: prepare the data (once, cached), load the model
and processor, derive the schedule and precision from the data and the hardware, build
a ``Seq2SeqTrainer``, resume from the newest complete checkpoint (local, else the Hub's
``last-checkpoint``), train, keep the checkpoint best on the eval split, score the test
split, write a model card and push.

The same command runs data-parallel under ``accelerate launch`` or ``torchrun``: the
Trainer does the distribution; preparation runs on the main process first and the
others read its cache.
"""

from __future__ import annotations

import json
import logging
import os

from whisper_zh.distributed import process_state
from whisper_zh.errors import ConfigError, DataError
from whisper_zh.train.checkpoints import (
    BestCheckpointToHub,
    OptimizerStateInNewestOnly,
    check_resume_kind,
    find_resume_point,
)
from whisper_zh.train.config import TrainConfig
from whisper_zh.train.data import collect_before_forking, prepare_data
from whisper_zh.train.examples import mel_filters_of
from whisper_zh.train.publish import (
    CONFIG_NAME,
    export_final_ct2,
    merge_adapter,
    plot_history,
    push_final_model,
    save_adapter,
    save_results,
    write_model_card,
)
from whisper_zh.train.trainer import (
    ParameterCount,
    ThroughputCallback,
    TrainResult,
    WhisperTrainer,
    apply_lora,
    build_training_arguments,
    check_lora,
    check_training_examples,
    configure_spec_augment,
    is_lora_model,
    load_model_and_processor,
    make_collator,
    make_compute_metrics,
    plan_training,
    quiet_whisper_generate,
    training_examples,
)

logger = logging.getLogger(__name__)

ZERO_SHOT_NAME = "zero_shot.json"


def train(config: TrainConfig) -> TrainResult:
    """Run the whole pipeline for ``config``; safe to run again after any interruption.

    Raises:
        DataError: the dataset cannot be used (or leaves no training clips).
        ConfigError: the configuration cannot work (e.g. save_steps not a multiple of eval_steps).
    """
    quiet_whisper_generate()
    check_training_examples(config)
    check_lora(config)
    # cpu=True on GPU-less machines: accelerate then also sets up torchrun's processes (gloo).
    state = process_state()
    # Preparation writes the cache once; the other processes of a multi-GPU run wait and read it.
    with state.main_process_first():
        data = prepare_data(config, verbose=state.is_main_process)
    if data.train is None or len(data.train) == 0:
        raise DataError("no training clips left after preparation: check the dataset and its split names")
    examples = training_examples(config, data.train)
    plan = plan_training(config, len(examples), state.num_processes)  # a config mistake fails here, early
    model, processor = load_model_and_processor(config.model_name_or_path, config.language, config.task)
    if config.max_label_tokens > model.config.max_target_positions:
        raise ConfigError(f"max_label_tokens ({config.max_label_tokens}) is more than the decoder's "
                          f"{model.config.max_target_positions} positions")
    if state.is_main_process:
        logger.info("%s", examples.describe())
        logger.info("%s", plan.describe(config))
    if plan.gradient_checkpointing:
        model.config.use_cache = False
    configure_spec_augment(model, config)
    model = apply_lora(model, config, plan.gradient_checkpointing)
    if config.freeze_encoder:  # after LoRA: the encoder's adapters are frozen too
        model.freeze_encoder()
    parameters = ParameterCount.of(model)
    if state.is_main_process:
        logger.info("training %d of %d parameters (%.2f%%)%s", parameters.trainable, parameters.total,
                    100 * parameters.share, f", LoRA rank {config.lora_r}" if config.uses_lora else "")

    trainer = WhisperTrainer(
        model=model,
        args=build_training_arguments(config, plan.schedule, plan.precision, plan.gradient_checkpointing),
        train_dataset=examples,
        eval_dataset=data.eval,
        data_collator=make_collator(model, processor),
        processing_class=processor,
        compute_metrics=make_compute_metrics(processor.tokenizer, config.language),
        callbacks=[ThroughputCallback(plan.schedule.global_batch_size)],
        mel_filters=mel_filters_of(processor.feature_extractor),
        return_timestamps=config.eval_timestamps,
    )
    trainer.add_callback(OptimizerStateInNewestOnly(trainer))
    trainer.add_callback(BestCheckpointToHub(trainer))

    collect_before_forking()  # the data loaders' workers are forked from here on
    zero_shot = zero_shot_metrics(trainer, data.test, config) if config.zero_shot_eval else {}
    resumed_from = find_resume_point(config, state)
    check_resume_kind(resumed_from, config.uses_lora)
    if resumed_from and state.is_main_process:
        logger.info("resuming from %s", resumed_from)
    trainer.train(resume_from_checkpoint=resumed_from)

    # With load_best_model_at_end the model in hand is now the checkpoint best on eval CER.
    if is_lora_model(trainer.model):
        if trainer.is_world_process_zero():
            save_adapter(trainer.model, config)
        # Every process merges (the test split is evaluated by all of them) the same weights.
        trainer.model = trainer.model_wrapped = merge_adapter(trainer.model, config.output_dir)
    trainer.save_model(config.output_dir)
    test_metrics = {}
    if data.test is not None and len(data.test):
        test_metrics = trainer.evaluate(eval_dataset=data.test, metric_key_prefix="test")
    result = TrainResult(
        output_dir=config.output_dir,
        global_step=trainer.state.global_step,
        best_checkpoint=trainer.state.best_model_checkpoint,
        eval_cer=trainer.state.best_metric,
        test_metrics=test_metrics,
        resumed_from=resumed_from,
        log_history=trainer.state.log_history,
        is_main_process=trainer.is_world_process_zero(),
        zero_shot_metrics=zero_shot,
        parameters=parameters,
    )
    if result.is_main_process:
        processor.save_pretrained(config.output_dir)
        with open(os.path.join(config.output_dir, CONFIG_NAME), "w") as f:
            json.dump(config.to_dict(), f, indent=2, ensure_ascii=False)
        export_final_ct2(config)
        results = save_results(result, config, data, trainer.args, plan)
        plot_history(result.log_history, config.output_dir)
        write_model_card(config, results)
        if config.hub_model_id:
            push_final_model(trainer, config)
    return result


def zero_shot_metrics(trainer: WhisperTrainer, test, config: TrainConfig) -> dict:
    """The base model's ``zero_shot_cer`` / ``zero_shot_wer`` on the test split, decoded as
    the fine-tuned model will be; computed before the first step and kept in
    ``output_dir/zero_shot.json``, so a resumed run does not compute it again."""
    if test is None or not len(test):
        return {}
    path = os.path.join(config.output_dir, ZERO_SHOT_NAME)
    key = {"base_model": config.model_name_or_path, "test_split": config.test_split, "clips": len(test)}
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            return saved["metrics"]
    metrics = trainer.evaluate(eval_dataset=test, metric_key_prefix="zero_shot")
    metrics = {k: v for k, v in metrics.items() if k in ("zero_shot_cer", "zero_shot_wer", "zero_shot_loss")}
    if trainer.is_world_process_zero():
        os.makedirs(config.output_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"key": key, "metrics": metrics}, f, indent=2)
    return metrics
