"""paratune's tuner: Hydra configs -> Optuna search -> multi-process engine runs -> reports."""
