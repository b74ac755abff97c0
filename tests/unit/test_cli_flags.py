"""The emu command's flags mean what kubectl's mean: -n is the namespace in every
command that names a namespaced object; the cluster is --name, else the
kubeconfig's current context (emu-NAME), as kind chooses."""

from __future__ import annotations

import pytest

from emu.cli import parse_args
from emu.control import kubeconfig


@pytest.mark.parametrize(
    "argv, field, expected",
    [
        (["exec", "-n", "shop", "backend-0", "--", "true"], "pod", "shop/backend-0"),
        (["exec", "shop/backend-0", "--", "true"], "pod", "shop/backend-0"),
        (["exec", "-n", "shop", "team/x", "--", "true"], "pod", "team/x"),  # its own namespace wins
        (["exec", "--node", "-n", "shop", "worker", "--", "true"], "pod", "worker"),  # nodes have none
        (["logs", "web", "-n", "shop"], "pod", "shop/web"),
        (["logs", "web"], "pod", "web"),
        (["delete", "pod", "web", "-n", "shop"], "pod", "shop/web"),
        (["describe", "svc", "frontend", "-n", "shop"], "service", "shop/frontend"),
        (["scale", "deploy", "frontend", "3", "-n", "shop"], "deployment", "shop/frontend"),
        (["get", "pods", "-n", "shop"], "namespace", "shop"),
        (["apply", "-f", "app.yaml", "-n", "shop"], "namespace", "shop"),
        (["dns", "web", "-n", "shop"], "namespace", "shop"),
    ],
)
def test_dash_n_is_the_namespace(argv, field, expected):
    assert getattr(parse_args(argv), field) == expected


@pytest.mark.parametrize("verb", ["status", "exec", "down", "graph", "capture", "trace", "kubeconfig", "up"])
def test_the_cluster_is_dash_dash_name(verb):
    extra = {"exec": ["p", "--", "true"], "capture": ["p"], "trace": ["a", "b"], "down": []}.get(verb, [])
    assert parse_args([verb, "--name", "lab", *extra]).name == "lab"


def test_status_has_no_dash_n(capsys):
    with pytest.raises(SystemExit):
        parse_args(["status", "-n", "lab"])
    assert "unrecognized arguments: -n" in capsys.readouterr().err


def test_the_current_context_names_the_cluster(tmp_path, monkeypatch):
    config = tmp_path / "config"
    monkeypatch.setenv("KUBECONFIG", str(config))
    assert kubeconfig.current_cluster() is None  # no file
    config.write_text("apiVersion: v1\nkind: Config\ncurrent-context: emu-lab\ncontexts: []\n")
    assert kubeconfig.current_cluster() == "lab"
    config.write_text("apiVersion: v1\nkind: Config\ncurrent-context: kind-kind\n")
    assert kubeconfig.current_cluster() is None  # not emu's
    config.write_text("[not, a, mapping")
    assert kubeconfig.current_cluster() is None
