"""Define and run the search: the space (a YAML file fitted to the pipeline and the machine), the Optuna study
loop with its valid-configuration sampler, the budget, the storage, the plan of a dry run, and the search
process's side of the workers (runner)."""
