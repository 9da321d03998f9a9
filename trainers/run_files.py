"""The names of the files a training run writes, defined once: pretrain, finetune and the experiment write them;
the report, the model cards and publish read them."""

TRAINING_ARGS_FILE = "training_args.json"  # every option of the run, with its fingerprints
EVAL_RESULTS_FILE = "eval_results.json"  # the final evaluation (pretrain: in OUT; finetune: in seed-N/)
METRICS_FILE = "metrics.jsonl"  # one line per logged step
EVAL_DOCUMENTS_FILE = "eval_documents.json"  # pretrain: per validation document, for paired comparisons
TRAINER_STATE_FILE = "trainer_state.json"  # in each checkpoint: step, epoch, loss, health
RESULTS_FILE = "results.json"  # finetune and experiment: the scores over seeds
RESULTS_PLOT = "results.png"  # finetune: the scores as a figure
