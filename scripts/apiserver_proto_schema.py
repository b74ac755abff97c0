"""Generate emu/apiserver/proto_schema.json: the field table the API server's
protobuf decoder (emu/apiserver/protobuf.py) reads request bodies with.

kubectl >= 1.32 sends the bodies of its typed-client commands (`create ns`,
`create configmap`, `auth can-i`, ...) as Kubernetes protobuf. The table comes
from upstream's generated.proto files (field numbers, types) and types.go
(JSON names, pointer fields, omitempty), read from git checkouts:

    python3 scripts/apiserver_proto_schema.py /work/.mirror/kubernetes+api/repo \
        /work/.mirror/kubernetes+apimachinery/repo > emu/apiserver/proto_schema.json
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

API_PACKAGES = {  # k8s.io/api directory -> apiVersion
    "core/v1": "v1", "apps/v1": "apps/v1", "authentication/v1": "authentication.k8s.io/v1",
    "authorization/v1": "authorization.k8s.io/v1", "autoscaling/v1": "autoscaling/v1",
    "coordination/v1": "coordination.k8s.io/v1", "discovery/v1": "discovery.k8s.io/v1",
    "events/v1": "events.k8s.io/v1", "networking/v1": "networking.k8s.io/v1",
    "rbac/v1": "rbac.authorization.k8s.io/v1", "policy/v1": "policy/v1",
}
MACHINERY = {"pkg/apis/meta/v1": "meta.k8s.io/v1", "pkg/runtime": "", "pkg/runtime/schema": "",
             "pkg/util/intstr": "", "pkg/api/resource": ""}
SCALARS = {"string", "int32", "int64", "bool", "bytes", "double", "float", "uint32", "uint64", "sint32", "sint64",
           "fixed32", "fixed64"}


def git_show(repo: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


def git_ls(repo: str, d: str) -> list[str]:
    out = subprocess.run(["git", "-C", repo, "ls-tree", "--name-only", f"HEAD:{d}"], capture_output=True, text=True,
                         check=True).stdout
    return [f"{d}/{n}" for n in out.split() if n.endswith(".go") and not n.endswith("_test.go")
            and "generated" not in n]


def go_fields(repo: str, d: str) -> dict[str, dict[int, tuple[str, bool, bool]]]:
    """struct name -> protobuf number -> (json name, pointer, omitempty) from the package's Go sources."""
    out: dict[str, dict[int, tuple[str, bool, bool]]] = {}
    for path in git_ls(repo, d):
        text = git_show(repo, path)
        for m in re.finditer(r"^type (\w+) struct \{(.*?)^\}", text, re.S | re.M):
            fields = out.setdefault(m.group(1), {})
            for f in re.finditer(r'^\s+\w+\s+(\*?)[^`\n]*`json:"([^"]*)"[^`]*protobuf:"(\w+),(\d+),', m.group(2), re.M):
                jname, _, opts = f.group(2).partition(",")
                # an embedded struct (json:"" or json:",inline") keeps "" as its name: its fields join the parent's
                fields[int(f.group(4))] = (jname, bool(f.group(1)), "omitempty" in opts)
    return out


def proto_messages(text: str) -> tuple[str, dict[str, dict]]:
    package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
    msgs: dict[str, dict] = {}
    text = re.sub(r"//[^\n]*", "", text)
    for m in re.finditer(r"^message (\w+) \{(.*?)^\}", text, re.S | re.M):
        fields = {}
        for f in re.finditer(r"(optional|repeated)?\s*(map<\s*([\w.]+)\s*,\s*([\w.]+)\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+);",
                             m.group(2)):
            label, typ, k, v, name, num = f.groups()
            fields[int(num)] = {"name": name, "type": typ, "repeated": label == "repeated", "map": (k, v) if k else None}
        msgs[m.group(1)] = fields
    return package, msgs


def qualify(typ: str, package: str) -> str:
    if typ in SCALARS:
        return typ
    if typ.startswith("."):
        return typ[1:]
    return f"{package}.{typ}"


def main() -> None:
    api_repo, machinery_repo = sys.argv[1], sys.argv[2]
    messages: dict[str, dict] = {}
    kinds: dict[str, str] = {}
    for repo, pkgs, prefix in ((api_repo, API_PACKAGES, "k8s.io/api"), (machinery_repo, MACHINERY,
                                                                          "k8s.io/apimachinery")):
        for d, api_version in pkgs.items():
            package, msgs = proto_messages(git_show(repo, f"{d}/generated.proto"))
            gof = go_fields(repo, d)
            for name, fields in msgs.items():
                qname = f"{package}.{name}"
                table = {}
                for num, f in fields.items():
                    jname, pointer, omitempty = gof.get(name, {}).get(num, (None, False, True))
                    if f["map"]:
                        typ = ["map", qualify(f["map"][0], package), qualify(f["map"][1], package)]
                    else:
                        typ = qualify(f["type"], package)
                    # keep a zero scalar only when JSON would: a pointer, or a field without omitempty
                    table[str(num)] = [f["name"] if jname is None else jname, typ, f["repeated"],
                                       pointer or not omitempty]
                messages[qname] = table
                if api_version:
                    kinds[f"{api_version}/{name}"] = qname
    json.dump({"kinds": kinds, "messages": messages}, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
