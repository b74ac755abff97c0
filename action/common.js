// Shared by main.js and post.js: inputs, outputs and commands the runner's way,
// with Node's standard library only (nothing to npm install).
"use strict";
const fs = require("fs");
const { spawnSync } = require("child_process");

// An input: the runner passes `with:` values as INPUT_<NAME> (upper case, spaces as _).
function input(name, fallback = "") {
  const value = process.env[`INPUT_${name.replace(/ /g, "_").toUpperCase()}`];
  return value === undefined || value.trim() === "" ? fallback : value.trim();
}

// Append name=value to one of the runner's files (GITHUB_OUTPUT, GITHUB_STATE, ...).
function record(variable, name, value) {
  const file = process.env[variable];
  if (!file) throw new Error(`${variable} is not set: run this as a GitHub Action`);
  fs.appendFileSync(file, `${name}=${value}\n`);
}

// Run argv, its output shown in the log; returns the exit code (and the text with capture).
function run(argv, { capture = false, check = true } = {}) {
  console.log(`$ ${argv.join(" ")}`);
  const result = spawnSync(argv[0], argv.slice(1), {
    stdio: capture ? ["ignore", "pipe", "pipe"] : "inherit",
    encoding: "utf8",
  });
  if (result.error) throw new Error(`${argv[0]}: ${result.error.message}`);
  if (capture) process.stdout.write(result.stdout + result.stderr);
  if (check && result.status !== 0) throw new Error(`${argv.join(" ")} failed (exit ${result.status})`);
  return { status: result.status, output: capture ? result.stdout + result.stderr : "" };
}

function fail(error) {
  // The runner's way to mark the step failed with a message.
  console.log(`::error::${String(error.message || error).replace(/\n/g, "%0A")}`);
  process.exitCode = 1;
}

module.exports = { input, record, run, fail };
