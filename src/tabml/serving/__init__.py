"""The prediction service: FastAPI app serving the artifacts under `models/` with training parity.

Module map (imports only point down): `cli` and `worker` start processes; `app` wires routes
(`oip` adds the Open Inference Protocol v2 subset); `service` owns the loaded model, request
validation (`schemas`, generated from the data contract) and prediction (`predictor`, reusing
`tabml.features` and `tabml.model`); `provenance` checks artifacts against `dvc.lock`;
`metrics` and `logs` make it observable; `live_monitor` hands the traffic to each worker's
`monitor_process`, which watches it off the request path (`monitor_state`: drift and realized
windows, the `prediction_index` /feedback labels against, the `prediction_log` segments,
`worker_state` shared between workers) and `feedback` takes labels (`label_join` finds their
predictions in every worker's index);
`settings` is the one typed configuration object.

Nothing here imports pandas, scikit-learn, MLflow, DVC or Hydra.
"""
