import optuna

from autoopt.sampler import ValidConfigSampler
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
