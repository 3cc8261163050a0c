"""A fine-tuning run of a study as the downstream bundle logs it to MLflow, for the tests of the study tools."""

import mlflow

from tools.study import PlannedRun, Store


def log_run(store: Store, run: PlannedRun, metrics: dict[str, float] | None) -> None:
    """One MLflow run of ``run`` in ``store``: the params the study reads (``method``, ``study``, ``train_fraction``,
    ``seed``, ``train_images`` = 40 x the fraction), then ``metrics`` and FINISHED, or, with ``metrics`` ``None``,
    FAILED without metrics, as an interrupted run ends."""
    client = mlflow.MlflowClient(tracking_uri=store.uri)
    experiment = client.get_experiment_by_name(store.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(store.experiment)
    run_id = client.create_run(experiment_id, run_name=run.name).info.run_id
    params = {"method": run.method.label, "study": store.study, "train_fraction": run.fraction, "seed": run.seed,
              "train_images": int(40 * run.fraction)}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    if metrics is None:
        client.set_terminated(run_id, "FAILED")
        return
    for metric, value in metrics.items():
        client.log_metric(run_id, metric, value)
    client.set_terminated(run_id)
