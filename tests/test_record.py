"""trainers.record: one declaration of a trial's statuses and fields, read by the trainable, the
searcher (user attrs) and analysis.load_study (columns)."""

import json

import optuna

from analysis.load import ATTR_COLUMNS, load_study
from studies.search import RESULT_ATTRS
from trainers.record import FAILED, NOT_COUNTED, UNMEASURED, Status, TrialRecord
from trainers.train import TrainResult


def test_a_status_is_its_stored_word():
    assert Status.OK == "ok" and "interrupted" in NOT_COUNTED and "oom" in FAILED and "diverged" in UNMEASURED
    assert (
        json.dumps({"status": Status.PRUNED}) == '{"status": "pruned"}' and f"{Status.ERROR:6}|" == "error |"
    )


def test_stored_attrs_and_columns_are_those_of_before_plus_the_new_fields():
    assert RESULT_ATTRS == (
        *("genome_key", "epochs_completed", "status", "wall_s", "train_s", "device", "seed", "node"),
        *("error", "traceback", "warmup_s", "compiled_graphs", "deterministic_requested", "deterministic"),
        *("nondeterministic_ops", "data_on_device", "gpus_per_trial", "memory_fraction"),
        *("top1_per_epoch", "top5_per_epoch", "environment", "rung", "protocol"),
    )
    assert ATTR_COLUMNS == (
        *("genome_key", "epochs_completed", "status", "wall_s", "train_s", "device", "seed"),
        *("reference", "recipe", "error", "environment", "rung"),
    )


def test_a_record_reports_what_is_set_and_takes_the_train_results_fields():
    rec = TrialRecord(trial_number=3, status=Status.RUNNING, metrics={"top1": 0.0})
    assert rec.to_dict() == {"top1": 0.0, "trial_number": 3, "status": "running"}
    fields = dict(top1=0.5, top5=0.9, loss=1.2, val_loss=1.3, images_per_s=100.0, peak_mem_mb=50.0)
    res = TrainResult(Status.OK, **fields, epochs=4, wall_s=9.0, train_s=8.0, device="cpu", params=1000,
                      seed=7, num_classes=10, skipped_images=0)  # fmt: skip
    rec.update_from(res)
    got = rec.to_dict()
    assert (got["status"], got["epochs_completed"], got["seed"], got["num_classes"]) == ("ok", 4, 7, 10)
    assert got["memory_fraction"] is None and "error" not in got and "top5" not in got


def test_a_trial_of_an_older_journal_loads_its_missing_attrs_as_none(tmp_path):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
    )
    study = optuna.create_study(study_name="old", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr(
        "objectives", [{"name": "top1", "direction": "maximize"}, {"name": "flops", "direction": "minimize"}]
    )
    study.add_trial(optuna.trial.create_trial(values=[0.5, 1e9], user_attrs={"genome_key": "k", "seed": 0}))
    df = load_study(storage, "old")
    assert df.loc[0, "status"] == "ok" and df.loc[0, "recipe"] is None and df.loc[0, "error"] is None
