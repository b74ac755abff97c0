// The action's post step, run when the job ends whatever happened: `emu down`.
"use strict";
const { run, fail } = require("./common");

try {
  const name = process.env.STATE_name;
  const python = process.env.STATE_python;
  if (!name || !python) {
    console.log("no cluster was started; nothing to remove");
  } else if (process.env.STATE_keep === "true") {
    console.log(`leaving cluster '${name}' running (keep: true)`);
  } else {
    run([python, "-m", "emu.cli", "down", name]);
  }
} catch (error) {
  fail(error);
}
