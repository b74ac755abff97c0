"""CLI parsing: what a user types reaches the right place."""

import pytest

from emu.cli import main, parse_args


def test_exec_passes_options_after_double_dash_to_the_command():
    args = parse_args(["exec", "web", "-c", "sidecar", "--", "curl", "-s", "http://localhost:8080/"])
    assert args.verb == "exec" and args.pod == "web" and args.container == "sidecar"
    assert args.argv == ["curl", "-s", "http://localhost:8080/"]


def test_exec_without_double_dash():
    args = parse_args(["exec", "client", "hostname"])
    assert args.argv == ["hostname"] and args.container is None


def test_double_dash_outside_exec_is_an_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["status", "--", "x"])
    assert "only for `emu exec" in capsys.readouterr().err


def test_validate_reports_problems_without_traceback(tmp_path, capsys):
    path = tmp_path / "lab.yaml"
    path.write_text("nodes:\n  - name: a\n    rol: worker\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:5: nodes[0].rol: unknown key 'rol'" in err and "Traceback" not in err


def test_missing_topology_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_schema_prints_json(capsys):
    import json

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "nodes" in schema["properties"]
