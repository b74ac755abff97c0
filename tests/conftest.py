import pytest

# pytester: the plugin tests (tests/*/test_*plugin*.py) run pytest on inner test files.
pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
