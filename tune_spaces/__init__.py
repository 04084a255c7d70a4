"""Search spaces for ``dinowm tune``, one YAML file per family (format: ``ray_jobs/tune_space.py``).

``train_<env>``: the world model's hyperparameters, one Ray Train run per trial, ASHA on the validation loss.
``planner_<env>``: planner settings evaluated on one fixed checkpoint, by success rate.
"""
