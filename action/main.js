// The action's main step: install emu, prepare the kernel, `emu up`, outputs.
"use strict";
const fs = require("fs");
const path = require("path");
const { input, record, run, fail } = require("./common");

function pythonWithEmu(python, install) {
  const version = run([python, "-c", "import sys; print(sys.version_info >= (3, 11), sys.executable)"], { capture: true });
  const [recent, executable] = version.output.trim().split(/\s+/).slice(-2);
  if (recent !== "True") {
    throw new Error(`emu needs Python 3.11 or newer, and ${python} is older; add actions/setup-python (python-version: "3.12") before this step`);
  }
  if (install === "false") return executable;
  const spec = install || `${path.resolve(__dirname, "..")}[test]`;
  const pip = ["-m", "pip", "install", "--disable-pip-version-check", "--quiet", spec];
  const attempt = run([executable, ...pip], { capture: true, check: false });
  if (attempt.status === 0) return executable;
  if (!/externally-managed-environment/.test(attempt.output)) throw new Error(`pip could not install ${spec}`);
  // The runner's own Python (PEP 668) takes no packages: a virtualenv that still
  // sees its packages, put first on PATH for the steps after this one.
  const venv = path.join(process.env.RUNNER_TEMP || "/tmp", "emu-venv");
  console.log(`${executable} is managed by the system; installing emu into ${venv} (first on PATH from now on)`);
  run([executable, "-m", "venv", "--system-site-packages", venv]);
  const inVenv = path.join(venv, "bin", "python");
  run([inVenv, ...pip]);
  if (process.env.GITHUB_PATH) fs.appendFileSync(process.env.GITHUB_PATH, `${path.join(venv, "bin")}\n`);
  return inVenv;
}

function prepareKernel() {
  // Pods share the kernel's ARP table (1,024 entries by default); legacy iptables is faster.
  const sudo = process.getuid && process.getuid() === 0 ? [] : ["sudo", "-n"];
  const steps = [
    ["sysctl", "-w", "net.ipv4.neigh.default.gc_thresh1=4096", "net.ipv4.neigh.default.gc_thresh2=8192",
      "net.ipv4.neigh.default.gc_thresh3=16384"],
    ["modprobe", "-a", "ip_tables", "iptable_nat", "iptable_filter"],
  ];
  for (const step of steps) {
    if (run([...sudo, ...step], { check: false }).status !== 0) {
      console.log(`::warning::could not run ${step[0]} (emu works without it, with smaller labs or slower rules)`);
    }
  }
}

function main() {
  const topology = input("topology");
  if (!topology) throw new Error("give the action a topology: with: {topology: path/to/lab.yaml}");
  const file = path.resolve(process.env.GITHUB_WORKSPACE || ".", topology);
  if (!fs.existsSync(file)) throw new Error(`topology ${topology}: no such file (looked at ${file})`);
  const python = pythonWithEmu(input("python", "python3"), input("install"));
  // emu builds its node image from images/ of a checkout: this action's own copy,
  // for its commands and for the job's later steps (the pytest plugin, emu ...).
  if (!process.env.EMU_IMAGES_DIR) {
    process.env.EMU_IMAGES_DIR = path.resolve(__dirname, "..", "images");
    if (process.env.GITHUB_ENV) fs.appendFileSync(process.env.GITHUB_ENV, `EMU_IMAGES_DIR=${process.env.EMU_IMAGES_DIR}\n`);
  }
  if (input("prepare", "true") === "true") prepareKernel();
  const emu = [python, "-m", "emu.cli"];
  let name = input("name");
  if (!name) {
    const loaded = run([python, "-c", "import sys; from emu.topology.load import load_file; print(load_file(sys.argv[1]).name)", file],
      { capture: true });
    name = loaded.output.trim().split("\n").pop();
  }
  // Recorded before `up`, so the post step removes whatever up left even if it failed.
  record("GITHUB_STATE", "name", name);
  record("GITHUB_STATE", "python", python);
  record("GITHUB_STATE", "keep", input("keep", "false"));
  record("GITHUB_OUTPUT", "name", name);
  record("GITHUB_OUTPUT", "python", python);
  run([...emu, "up", file, "--name", name]);
  run([...emu, "status", "--name", name]);
}

try {
  main();
} catch (error) {
  fail(error);
}
