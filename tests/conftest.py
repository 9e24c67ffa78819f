# pytest-salt-factories' salt_factories fixture, rooted in each test's tmp_path,
# for every test directory (tests/saltfactories_support.py says why it is ours).
pytest_plugins = ["tests.saltfactories_support"]
