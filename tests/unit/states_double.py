"""
The states as Salt's loader wires them, over one minion's dunders, with
counting doubles for the pure core and nft (tests/unit/test_run_context.py,
tests/unit/test_state_data.py); the ``pillar`` fixture is in
tests/unit/conftest.py.
"""

from tests.modules import core, load_file

qf_model, qf_plan, qf_nft, qf_run = core("model"), core("plan"), core("nft"), core("run")
# the states' names since the rename (the old ones stay as deprecated aliases: tests/unit/test_state_data.py)
NEW_NAMES = {"locked": "run_locked", "runtime_rules": "rules_managed", "persisted_rules": "boot_replay_managed",
             "custom_persist_replay": "custom_persist_replay_managed",
             "connect_tcp_bindings": "connect_tcp_bindings_managed", "summary": "run_summary"}


class Run:
    def __init__(self, tmp_path, minion_id, pillar, monkeypatch):
        self.context, self.calls = {}, {}
        self.opts = {"id": minion_id, "test": True, "qubes_firewall_state_dir": str(tmp_path / "state"),
                     "qubes_firewall_systemd_run_dir": str(tmp_path / "no-systemd")}
        self.pillar = pillar
        self.nft_doc = {"nftables": [
            {"chain": {"family": "ip", "table": "qubes", "name": n, "handle": i}}
            for i, n in enumerate(("custom-input", "custom-forward"), 1)]}
        monkeypatch.setattr(qf_nft, "read", lambda: self.nft_doc)
        monkeypatch.setattr(qf_nft, "check", lambda script: True)  # nft -c of test mode
        for module, name in ((qf_model, "parse"), (qf_plan, "plan_qube"), (qf_nft, "read")):
            key = "%s.%s" % (module.__name__.lstrip("_"), name)
            monkeypatch.setattr(module, name, self._count(key, getattr(module, name)))
        self.states = load_file("_states/qubes_firewall.py", "qf_ctx_test_states")
        self.states.__salt__, self.states.__opts__, self.states.__pillar__ = {}, self.opts, self.pillar
        self.states.__context__ = self.context

    def run(self):
        """The run the execution module and the states build from Salt's dunders."""
        return qf_run.Run(self.opts, self.pillar, self.context)

    def _count(self, key, func):
        def counted(*args, **kwargs):
            self.calls[key] = self.calls.get(key, 0) + 1
            return func(*args, **kwargs)
        return counted

    def apply(self):
        """The qube part of init.sls, in its order."""
        out = {}
        for state in ("locked", "validated", "runtime_rules", "persisted_rules", "custom_persist_replay",
                      "connect_tcp_bindings", "summary"):
            function = NEW_NAMES.get(state, state)
            out[state] = getattr(self.states, function)("qubes_firewall-" + state)
        return out
