"""The attack suite's victim agent: it only answers, and keeps a secret
(VICTIM_SECRET, from its env_vars) that no other instance may read."""


def ok():
    return "ok"
