"""emu.control.kubeconfig: kind's kubeconfig behaviour, read back by the real kubectl."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading

import pytest
import yaml

from emu.control import kubeconfig
from emu.errors import EmuError

KUBECTL = "/usr/bin/kubectl"
needs_kubectl = pytest.mark.skipif(not os.path.exists(KUBECTL), reason="needs the real kubectl at /usr/bin/kubectl")

CA, CERT, KEY = b"-----CA-----\n", b"-----CERT-----\n", b"-----KEY-----\n"

OTHER = """\
apiVersion: v1
clusters:
- cluster:
    server: https://prod.example:6443
    insecure-skip-tls-verify: true
  name: prod
contexts:
- context:
    cluster: prod
    namespace: shop
    user: alice
  name: prod
current-context: prod
kind: Config
preferences:
  colors: true
users:
- name: alice
  user:
    token: secret-token
extensions:
- name: my-extension
  extension: {x: 1}
"""


def kubectl(config, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(config), "HOME": str(config.parent)}
    out = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def view(config) -> dict:
    return json.loads(kubectl(config, "config", "view", "--raw", "-o", "json"))


def names(config, key) -> list[str]:
    return [e["name"] for e in view(config)[key] or []]


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return tmp_path


@needs_kubectl
def test_merge_into_existing_config_keeps_everything_else(env):
    path = env / "config"
    path.write_text(OTHER)
    kubeconfig.merge("lab", "https://127.0.0.1:41234", CA, CERT, KEY, path=path)

    assert kubectl(path, "config", "current-context").strip() == "emu-lab"
    contexts = kubectl(path, "config", "get-contexts", "-o", "name").split()
    assert contexts == ["emu-lab", "prod"]
    doc = view(path)
    ours = {c["name"]: c["cluster"] for c in doc["clusters"]}["emu-lab"]
    assert ours["server"] == "https://127.0.0.1:41234"
    assert base64.b64decode(ours["certificate-authority-data"]) == CA
    user = {u["name"]: u["user"] for u in doc["users"]}["emu-lab"]
    assert base64.b64decode(user["client-certificate-data"]) == CERT
    assert base64.b64decode(user["client-key-data"]) == KEY

    # Everything that was there is there still, unchanged.
    before, after = yaml.safe_load(OTHER), yaml.safe_load(path.read_text())
    for key in ("clusters", "contexts", "users"):
        assert [e for e in after[key] if e["name"] != "emu-lab"] == before[key]
    assert after["preferences"] == {"colors": True}
    assert after["extensions"] == before["extensions"]
    assert path.stat().st_mode & 0o777 == 0o600


@needs_kubectl
def test_remove_restores_the_other_entries_and_clears_our_current_context(env):
    path = env / "config"
    path.write_text(OTHER)
    kubeconfig.merge("lab", "https://127.0.0.1:1", CA, CERT, KEY, path=path)
    assert kubeconfig.remove("lab", path=path) == [path]
    assert names(path, "contexts") == ["prod"]
    assert names(path, "clusters") == ["prod"]
    assert names(path, "users") == ["alice"]
    assert yaml.safe_load(path.read_text())["current-context"] == ""
    # Removing again changes nothing.
    assert kubeconfig.remove("lab", path=path) == []


def test_remove_keeps_a_current_context_that_is_not_ours(env):
    path = env / "config"
    kubeconfig.merge("a", "https://127.0.0.1:1", CA, CERT, KEY, path=path)
    kubeconfig.merge("b", "https://127.0.0.1:2", CA, CERT, KEY, path=path)
    kubeconfig.remove("a", path=path)
    doc = yaml.safe_load(path.read_text())
    assert doc["current-context"] == "emu-b"
    assert [c["name"] for c in doc["contexts"]] == ["emu-b"]


@needs_kubectl
def test_merge_creates_home_kube_config(env):
    written = kubeconfig.merge("lab", "https://127.0.0.1:6443", CA, CERT, KEY)
    assert written == env / "home" / ".kube" / "config"
    assert written.stat().st_mode & 0o777 == 0o600
    assert kubectl(written, "config", "get-contexts", "-o", "name").split() == ["emu-lab"]
    assert not (env / "home" / ".kube" / "config.lock").exists()


@needs_kubectl
def test_merge_again_replaces_in_place(env):
    path = env / "config"
    path.write_text(OTHER)
    kubeconfig.merge("lab", "https://127.0.0.1:1", CA, CERT, KEY, path=path)
    kubeconfig.merge("lab", "https://127.0.0.1:2", CA, CERT, KEY, path=path)
    assert [c["name"] for c in yaml.safe_load(path.read_text())["clusters"]] == ["prod", "emu-lab"]
    doc = view(path)
    assert {c["name"]: c["cluster"]["server"] for c in doc["clusters"]}["emu-lab"] == "https://127.0.0.1:2"


def test_kubeconfig_variable_picks_the_first_existing_file_else_the_last(env, monkeypatch):
    a, b, c = env / "a", env / "b", env / "c"
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(a), str(b), str(c)]))
    assert kubeconfig.default_path() == c
    b.write_text(OTHER)
    assert kubeconfig.default_path() == b
    kubeconfig.merge("lab", "https://127.0.0.1:1", CA, CERT, KEY)
    assert "emu-lab" in b.read_text() and not a.exists() and not c.exists()
    monkeypatch.setenv("KUBECONFIG", str(a))
    assert kubeconfig.default_path() == a


def test_remove_without_path_edits_every_kubeconfig_file(env, monkeypatch):
    a, b = env / "a", env / "b"
    kubeconfig.merge("lab", "https://127.0.0.1:1", CA, CERT, KEY, path=a)
    kubeconfig.merge("lab", "https://127.0.0.1:1", CA, CERT, KEY, path=b)
    monkeypatch.setenv("KUBECONFIG", f"{a}{os.pathsep}{b}")
    assert kubeconfig.remove("lab") == [a, b]
    assert "emu-lab" not in a.read_text() + b.read_text()


def test_concurrent_merges_lose_nothing(env):
    path = env / "config"
    errors = []

    def up(i: int) -> None:
        try:
            kubeconfig.merge(f"c{i}", f"https://127.0.0.1:{7000 + i}", CA, CERT, KEY, path=path)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=up, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    doc = yaml.safe_load(path.read_text())
    assert sorted(c["name"] for c in doc["contexts"]) == sorted(f"emu-c{i}" for i in range(12))
    assert not (env / "config.lock").exists()


def test_a_stale_lock_is_named_in_the_error(env, monkeypatch):
    path = env / "config"
    (env / "config.lock").write_text("")
    monkeypatch.setattr(kubeconfig, "LOCK_TIMEOUT", 0.05)
    with pytest.raises(EmuError, match=r"config\.lock: held for more than .*remove the lock file"):
        kubeconfig.merge("lab", "https://127.0.0.1:1", CA, CERT, KEY, path=path)
    assert not path.exists()


def test_a_broken_file_is_refused_and_left_alone(env):
    path = env / "config"
    path.write_text("clusters: [unclosed\n")
    with pytest.raises(EmuError, match=r"config:2:1: not a valid kubeconfig \(expected .*fix or move it"):
        kubeconfig.merge("lab", "https://127.0.0.1:1", CA, CERT, KEY, path=path)
    assert path.read_text() == "clusters: [unclosed\n"


def test_a_symlinked_config_stays_a_symlink(env):
    real = env / "dotfiles" / "kubeconfig"
    real.parent.mkdir()
    real.write_text(OTHER)
    link = env / "config"
    link.symlink_to(real)
    kubeconfig.merge("lab", "https://127.0.0.1:1", CA, CERT, KEY, path=link)
    assert link.is_symlink() and "emu-lab" in real.read_text()


@needs_kubectl
def test_render_is_a_whole_kubeconfig(env):
    text = kubeconfig.render("lab", "https://127.0.0.1:6443", CA, CERT, KEY)
    path = env / "rendered"
    path.write_text(text)
    assert kubectl(path, "config", "current-context").strip() == "emu-lab"
    assert kubectl(path, "config", "get-contexts", "-o", "name").split() == ["emu-lab"]
