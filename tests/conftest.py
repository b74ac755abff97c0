import os
import tempfile

import pytest

# Clusters the suite makes merge their kubeconfig context (emu-<name>) as `emu up`
# does for users; into a file of the test run's own, never the developer's ~/.kube/config.
os.environ["KUBECONFIG"] = os.path.join(tempfile.mkdtemp(prefix="emu-tests-kube-"), "config")

# pytester: the plugin tests (tests/*/test_*plugin*.py) run pytest on inner test files.
pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
