import optuna

from autoopt.study.sampler import ValidConfigSampler
from optuna.distributions import CategoricalDistribution


def test_never_draws_a_conflict_or_a_finished_config():
    dists = {"a": CategoricalDistribution([0, 1, 2]), "b": CategoricalDistribution(["x", "y"])}

    def conflict(c):
        return "b=y needs a>0" if c["b"] == "y" and c["a"] == 0 else None

    study = optuna.create_study(sampler=ValidConfigSampler(optuna.samplers.RandomSampler(seed=1), dists, conflict, seed=1))
    study.enqueue_trial({"a": 1, "b": "x"})
    trial = study.ask()
    trial.suggest_categorical("a", [0, 1, 2]), trial.suggest_categorical("b", ["x", "y"])
    study.tell(trial, 1.0)
    seen = [trial.params]
    for _ in range(4):  # 6 combinations, 1 conflicting (never drawn, no trial spent on it), 1 seen: 4 are left
        t = study.ask()
        params = {"a": t.suggest_categorical("a", [0, 1, 2]), "b": t.suggest_categorical("b", ["x", "y"])}
        assert params not in seen and conflict(params) is None
        seen.append(params)
        study.tell(t, 1.0)


def test_skips_the_scope_of_a_build_time_failure():
    dists = {"q": CategoricalDistribution(["none", "static"]), "rt": CategoricalDistribution(["eager", "ort"]),
             "bs": CategoricalDistribution([1, 2, 4])}
    study = optuna.create_study(sampler=ValidConfigSampler(optuna.samplers.RandomSampler(seed=3), dists,
                                                           lambda c: None, seed=3))
    study.enqueue_trial({"q": "static", "rt": "eager", "bs": 1})
    t = study.ask()
    for name, dist in dists.items():
        t.suggest_categorical(name, dist.choices)
    t.set_user_attr("pruned_scope", {"q": "static", "rt": "eager"})
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    for _ in range(8):  # 12 combinations, 3 inside the scope: 9 remain, one seen
        t = study.ask()
        params = {name: t.suggest_categorical(name, dist.choices) for name, dist in dists.items()}
        assert (params["q"], params["rt"]) != ("static", "eager")
        study.tell(t, 1.0)


def test_running_and_enqueued_trials_count_as_taken():
    """Two jobs of one study: a configuration another job runs, or one enqueued to run next (the warm
    start), is never drawn again."""
    dists = {"a": CategoricalDistribution([0, 1, 2])}
    for seed in range(8):
        study = optuna.create_study(sampler=ValidConfigSampler(optuna.samplers.RandomSampler(seed=seed), dists,
                                                               lambda c: None, seed=seed))
        running = study.ask()
        running.suggest_categorical("a", [0, 1, 2])  # drawn, not finished: another job's trial
        study.enqueue_trial({"a": 2 if running.params["a"] != 2 else 1})
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))[0]
        left = ({0, 1, 2} - {running.params["a"], waiting.system_attrs["fixed_params"]["a"]}).pop()
        third = optuna.Trial(study, study._storage.create_new_trial(study._study_id))  # ask() pops the enqueued
        assert third.suggest_categorical("a", [0, 1, 2]) == left


def test_the_budget_draws_each_configuration_before_another_job_asks():
    from autoopt.study.budget import Budget

    study = optuna.create_study()
    budget = Budget(study, n_trials=5, timeout_s=None)
    drawn = []
    budget.prepare = lambda trial: drawn.append((budget.lock.locked(), trial.number))
    trial = budget.ask()
    assert drawn == [(True, trial.number)]
